"""Errors a person can act on: each names the study (by its key) and what is wrong."""

from __future__ import annotations


class NeuroflowError(Exception):
    """Base class of every error neuroflow raises on purpose."""


class StudyError(NeuroflowError):
    """A study cannot be processed; ``reason`` is a sentence an imaging team can act on."""

    def __init__(self, study_key: str, reason: str, *, stage: str = "", series_uid: str | None = None) -> None:
        self.study_key = study_key
        self.reason = reason
        self.stage = stage
        self.series_uid = series_uid
        # The series by its pseudonymous key: a UID identifies, and error texts leave the process (logs,
        # dead letters, the workflow's history). Imported here: identity imports modules that import errors.
        from neuroflow.core.identity import uid_key

        where = f" series {uid_key(series_uid)}" if series_uid else ""
        super().__init__(f"study {study_key}{where}: {reason}")


class SeriesRejected(StudyError):
    """One series is unusable (missing or inconsistent slices, unreadable pixels)."""


class MissingSequence(StudyError):
    """The pipeline needs a series role the study does not have."""


class AmbiguousRole(StudyError):
    """Two or more series of different protocols qualify for a required role and their evidence is too close to
    call: refused rather than guessed. The reason names the candidates (series number and description)."""


class OrientationMismatch(StudyError):
    """Series of one study disagree on left and right: refusing rather than producing nonsense."""


class InferenceUnavailable(NeuroflowError):
    """The inference backend cannot serve a model (not found, not ready, went away). Retryable."""


class OrthancUnavailable(NeuroflowError):
    """An Orthanc server cannot be reached or cannot answer (refused, timed out, server error), after
    retries. Retryable: the message names the URL and what was being done."""


class OrthancRequestFailed(NeuroflowError):
    """Orthanc answered, and refused the request (bad upload, unknown resource...). Not retryable as is:
    the message names the URL, the HTTP status and Orthanc's own explanation."""

    def __init__(self, message: str, *, status: int) -> None:
        self.status = status
        super().__init__(message)


class DestinationUnavailable(NeuroflowError):
    """A DICOM destination (the PACS results are forwarded to) cannot be reached or did not answer in
    time. Retryable with backoff; the message names the destination and what failed."""


class DestinationRejected(NeuroflowError):
    """A DICOM destination answered and refused the objects (association or C-STORE refused). Retrying
    the same objects unchanged will not help: dead-letter with this reason."""


class BusError(NeuroflowError):
    """The message bus refused an operation (a message it will not take, a fatal client error)."""


class BusUnavailable(BusError):
    """The message bus cannot be reached (broker down, wrong address, no answer in time). Retryable:
    nothing was lost, a publish that raised this was not acknowledged and may be repeated."""


class StoreUnavailable(NeuroflowError):
    """A state database (workflow state, wait windows, timepoints) cannot be reached, or lost the connection
    during a statement and could not safely run it again. Retryable: the next call connects afresh. The
    message names the database (never its password) and whether the statement may have been applied."""


class InputLimitExceeded(StudyError):
    """A series or study is larger than the site's input limits (``NEUROFLOW_LIMITS__*``), as its headers
    state, so it is refused before any pixel data is decoded. Bad input, never retryable: decoding it could
    exhaust the worker's memory, and the same study would then kill every replica it is redelivered to.
    ``limit`` is the name of the setting that was exceeded."""

    def __init__(self, study_key: str, reason: str, *, limit: str, stage: str = "",
                 series_uid: str | None = None) -> None:
        self.limit = limit
        super().__init__(study_key, reason, stage=stage, series_uid=series_uid)
