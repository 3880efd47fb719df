"""DICOM source and sink. A source lists the studies it holds and hands out a series' instances; a
sink stores result objects. Embedded: a folder. Distributed: Orthanc (DICOMweb / REST)."""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from neuroflow.core.config import InputLimitSettings
from neuroflow.core.errors import InputLimitExceeded, SeriesRejected, StudyError

# Re-exported: callers name a study by this key; it is computed (keyed with the site secret) in core.identity.
from neuroflow.core.identity import study_key as study_key
from neuroflow.core.input_limits import (
    ReadBudget,
    check_series,
    check_study_size,
    dataset_bytes,
    max_dataset_bytes,
)
from neuroflow.core.non_image import SetAside, series_number, why_not_an_image
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sub_series import parse_sub_series_uid
from neuroflow.proto.neuroflow.v1 import common_pb2

log = logging.getLogger(__name__)


@dataclass
class SeriesInstances:
    """The instances of one series as found in a source: headers only until pixels are asked for."""

    study_instance_uid: str
    series_instance_uid: str
    headers: list[Dataset] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # where each instance lives in the source
    # One volume of a series that holds several (core.sub_series: "echo=2", "adc"); "" = the series.
    volume: str = ""


@dataclass
class StudyIndex:
    study_instance_uid: str
    patient_id: str
    series: dict[str, SeriesInstances] = field(default_factory=dict)
    # Non-image objects found under the study's series UIDs, taken out of ``series`` (set_aside_non_images).
    set_aside: list[SetAside] = field(default_factory=list)

    def set_aside_notes(self) -> list[str]:
        return [item.note() for item in self.set_aside]


def set_aside_non_images(study: StudyIndex) -> None:
    """Take every non-image object (raw data, presentation states, SR, key objects, our own results) out of
    the study's series, noting what was taken in ``study.set_aside``; a series left empty is dropped.
    Every source calls this when it indexes, so neither runtime ever classifies or converts one."""
    for uid in list(study.series):
        series = study.series[uid]
        kept: list[int] = []
        kinds: Counter[str] = Counter()
        headers: dict[str, list[Dataset]] = {}
        paths: dict[str, list[str]] = {}
        for n, header in enumerate(series.headers):
            why = why_not_an_image(header)
            if why is None:
                kept.append(n)
            else:
                kinds[why] += 1
                headers.setdefault(why, []).append(header)
                if n < len(series.paths):
                    paths.setdefault(why, []).append(series.paths[n])
        if not kinds:
            continue
        first = series.headers[0]
        description = str(first.get("SeriesDescription", "") or "").strip()
        study.set_aside.extend(SetAside(uid, series_number(first), description, what, count, tuple(headers[what]),
                                           tuple(paths.get(what, ())))
                               for what, count in sorted(kinds.items()))
        series.headers[:] = [series.headers[n] for n in kept]
        series.paths[:] = [series.paths[n] for n in kept]
        if not series.headers:
            del study.series[uid]
    if study.set_aside:
        log.info("study %s: %s", study_key(study.study_instance_uid), "; ".join(study.set_aside_notes()))


@dataclass
class SkippedFile:
    path: str
    reason: str


class DicomSource(ABC):
    # The input limits read_instances enforces from the headers before handing out pixel data; sources take
    # them from settings.limits (the defaults when built without).
    limits: InputLimitSettings = InputLimitSettings()

    @abstractmethod
    def index(self) -> tuple[dict[str, StudyIndex], list[SkippedFile]]:
        """Every study in the source with its series (headers only), and the files that were skipped."""

    @abstractmethod
    def read_instances(self, series: SeriesInstances) -> list[Dataset]:
        """The series' instances with pixel data (not decoded yet), in source order. Refuses
        (InputLimitExceeded) a series over ``limits`` by its indexed headers before reading it, and by the
        headers read, so nothing downstream decodes more than the limits allow: see ``check_limits``."""

    def check_limits(self, series: SeriesInstances, datasets: Sequence[Dataset] | None = None) -> None:
        """Refuses (InputLimitExceeded, SeriesRejected) ``series`` over ``limits``: from its indexed headers,
        or from ``datasets`` (the instances as read, whose headers may differ from the index's)."""
        headers = series.headers if datasets is None else datasets
        check_series(headers, self.limits, study_key=study_key(series.study_instance_uid), stage="read",
                     sources=series.paths)

    def index_study(self, study_instance_uid: str) -> tuple[StudyIndex | None, list[SkippedFile]]:
        """One study's index (None when the source does not hold it). Sources that can look a study up
        directly (Orthanc) override this; the default indexes everything."""
        studies, skipped = self.index()
        return studies.get(study_instance_uid), skipped


class DicomSink(ABC):
    @abstractmethod
    def store(self, dataset: Dataset) -> str:
        """Store one object; storing the same SOPInstanceUID again replaces it (idempotent)."""

    @abstractmethod
    def stored(self) -> list[str]:
        """SOPInstanceUIDs held by the sink."""


@runtime_checkable
class Forwarder(Protocol):
    """A sink that can also send what it stores on to a DICOM destination (the PACS), e.g. by C-STORE.

    ``forward`` sends the stored objects with these SOPInstanceUIDs to ``destination`` (a name the sink's
    configuration knows) and returns when the destination accepted them. Raises
    ``neuroflow.core.errors.DestinationUnavailable`` when the destination cannot be reached or did not answer
    (retry later) and ``DestinationRejected`` when it answered and refused (retrying will not help)."""

    def forward(self, sop_instance_uids: Sequence[str], destination: str, /) -> None: ...


def find_series(
    source: DicomSource,
    study: common_pb2.StudyRef,
    series_refs: Iterable[common_pb2.SeriesRef],
    *,
    stage: str,
    notes: list[str] | None = None,
    set_aside: list[SetAside] | None = None,
) -> dict[SeriesRole, SeriesInstances]:
    """The routed series (``series_refs``, each with its role) as ``source`` holds them now, by role.

    Refuses with SeriesRejected a series the source no longer has (deleted since routing: trying again
    will not bring it back; the reason says to re-send the study), and with StudyError a role this
    revision does not know. A series whose instance count changed since routing is used as it is now, with
    a warning (a late instance makes a new StudyReady, hence a new workflow). ``notes``, when given, gets
    what indexing set aside (non-image objects), for the report; ``set_aside``, the set-aside objects."""
    key = study.study_key
    held, _skipped = source.index_study(study.study_instance_uid)
    if held is not None:
        check_study_size(key, sum(len(s.headers) for s in held.series.values()), source.limits, stage=stage)
    if notes is not None and held is not None:
        notes.extend(held.set_aside_notes())
    if set_aside is not None and held is not None:
        set_aside.extend(held.set_aside)
    found: dict[SeriesRole, SeriesInstances] = {}
    for ref in series_refs:
        try:
            role = SeriesRole(ref.role)
        except ValueError:
            raise StudyError(key, f"routing gave series role {ref.role!r}, which this neuroflow does not know",
                             stage=stage, series_uid=ref.series_instance_uid) from None
        try:
            series = series_volume(held, ref.series_instance_uid) if held is not None else None
        except KeyError:
            series = None
        if series is None:
            raise SeriesRejected(key, f"the {role} series ({ref.description or 'no description'}) is no longer "
                                      "in the DICOM source; re-send the study", stage=stage,
                                 series_uid=ref.series_instance_uid)
        if ref.instance_count and len(series.headers) != ref.instance_count and not series.volume:
            log.warning("study %s: the %s series holds %d instances, routing saw %d", key, role,
                        len(series.headers), ref.instance_count)
        found[role] = series
    return found


def series_volume(study: StudyIndex, uid: str) -> SeriesInstances:
    """The series a (sub-)series UID names, as the study holds it: for "<series uid>#<volume>" the
    whole series' instances with ``volume`` set (conversion builds that volume from them). KeyError
    when the study has no such series."""
    series_uid, label = parse_sub_series_uid(uid)
    series = study.series[series_uid]
    return replace(series, volume=label) if label else series


class FolderDicomSource(DicomSource):
    """A folder of DICOM files: any nesting, any names. Files that are not DICOM are skipped with a
    warning, never fatal; a file whose header cannot be read is skipped with the reason."""

    def __init__(self, root: Path, *, limits: InputLimitSettings | None = None) -> None:
        self._root = root
        self.limits = limits or InputLimitSettings()
        # Where each indexed file's header ended (its pixel data starts), with the file's size and modification
        # time then: read_instances reads only the rest of a file that has not changed since, instead of parsing
        # the whole file a second time (half the time of reading a series).
        self._tails: dict[str, _Tail] = {}

    def index(self) -> tuple[dict[str, StudyIndex], list[SkippedFile]]:
        studies: dict[str, StudyIndex] = {}
        skipped: list[SkippedFile] = []
        self._tails.clear()
        for path in sorted(_walk(self._root)):
            try:
                ds = self._read_header(path)
            except TooLargeToRead as exc:
                skipped.append(SkippedFile(path, str(exc)))
                continue
            except InvalidDicomError:
                skipped.append(SkippedFile(path, "not a DICOM file"))
                continue
            except Exception as exc:  # pydicom raises many types on damaged files
                skipped.append(SkippedFile(path, f"unreadable DICOM header: {exc}"))
                continue
            try:  # values are converted on access: a damaged UID raises here, as any type
                study_uid = str(ds.get("StudyInstanceUID", ""))
                series_uid = str(ds.get("SeriesInstanceUID", ""))
                has_sop_uid = "SOPInstanceUID" in ds and bool(str(ds.SOPInstanceUID))
                patient_id = str(ds.get("PatientID", ""))
            except Exception as exc:
                skipped.append(SkippedFile(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}"))
                continue
            if not study_uid or not series_uid or not has_sop_uid:
                skipped.append(SkippedFile(path, "DICOM file without Study/Series/SOP Instance UID"))
                continue
            study = studies.setdefault(study_uid, StudyIndex(study_uid, patient_id))
            series = study.series.setdefault(series_uid, SeriesInstances(study_uid, series_uid))
            series.headers.append(ds)
            series.paths.append(path)
        for study in studies.values():
            set_aside_non_images(study)
        for item in skipped:
            log.warning("skipped %s: %s", item.path, item.reason)
        return studies, skipped

    def read_instances(self, series: SeriesInstances) -> list[Dataset]:
        """Refuses (SeriesRejected naming the file) a file that can no longer be read as DICOM, so
        the error points at the file an imaging team would have to resend."""
        self.check_limits(series)
        budget = ReadBudget(self.limits)
        datasets: list[Dataset] = []
        for header, path in zip(series.headers, series.paths, strict=True):
            try:
                datasets.append(self._read_rest(header, path, budget)
                                or _read_within_limits(path, self.limits, budget=budget))
            except TooLargeToRead as exc:
                raise InputLimitExceeded(study_key(series.study_instance_uid), str(exc), limit="max_series_bytes",
                                         stage="read", series_uid=series.series_instance_uid) from None
            except Exception as exc:  # pydicom raises many types on damaged files
                raise SeriesRejected(
                    study_key(series.study_instance_uid), f"unreadable DICOM file {path}: {exc}",
                    stage="convert", series_uid=series.series_instance_uid,
                ) from exc
        # Again on what was read: the pixel data (an encapsulated frame's codestream against the header's size) and
        # any file read in full, whose header may no longer be the one the index checked.
        self.check_limits(series, datasets)
        return datasets

    def _read_header(self, path: str) -> Dataset:
        """The file's header (up to its pixel data), remembering where it ended unless the file is deflated (pydicom
        inflates those whole: no offset into the file means anything)."""
        with open(path, "rb") as fp:
            ds = read_dicom_within_limits(fp, self.limits, source=path, stop_before_pixels=True)
            end = fp.tell()
            stat = os.fstat(fp.fileno())
        ds.filename = path  # as dcmread(path) sets it: messages name the file
        meta = getattr(ds, "file_meta", None)
        if isinstance(ds, FileDataset) and meta is not None and (
                meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian):
            self._tails[path] = _Tail(end, stat.st_size, stat.st_mtime_ns)
        return ds

    def _read_rest(self, header: Dataset, path: str, budget: ReadBudget) -> Dataset | None:
        """The whole dataset from ``header`` (as the index read it) and the rest of its file (the pixel data and
        anything after it); None, for a full read, when the file was not indexed here or has changed since."""
        tail = self._tails.get(path)
        if tail is None or not isinstance(header, FileDataset):
            return None
        with open(path, "rb") as fp:
            stat = os.fstat(fp.fileno())
            if (stat.st_size, stat.st_mtime_ns) != (tail.size, tail.mtime_ns):
                return None
            _take(budget, stat.st_size, path)  # what a full read counts for a file that is not deflated
            implicit, little = header.original_encoding
            fp.seek(tail.offset)
            rest = read_dataset(fp, bool(implicit), bool(little))
        # A new dataset: the header stays as the index holds it, without pixels.
        full = FileDataset(path, {**dict(header.items()), **dict(rest.items())}, preamble=header.preamble,
                           file_meta=header.file_meta, is_implicit_VR=bool(implicit), is_little_endian=bool(little))
        full.set_original_encoding(implicit, little, header.original_character_set)
        return full


@dataclass(frozen=True)
class _Tail:
    offset: int  # where the header ended: the pixel data element's first byte
    size: int
    mtime_ns: int


class FolderDicomSink(DicomSink):
    """Writes each object as ``<root>/<SOPInstanceUID>.dcm``; atomic (write then rename), so a reader
    never sees half a file and a redelivered result replaces rather than duplicates."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def store(self, dataset: Dataset) -> str:
        uid = str(dataset.SOPInstanceUID)
        final = self._root / f"{uid}.dcm"
        tmp = final.with_suffix(".dcm.partial")
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, final)
        return uid

    def stored(self) -> list[str]:
        return sorted(p.stem for p in self._root.glob("*.dcm"))


class TooLargeToRead(ValueError):
    """A file that would take more memory to read than the input limits allow: a deflated dataset that
    inflates past them (a zip bomb), or the files of one series that together exceed them."""


def read_dicom_within_limits(fp: BinaryIO, limits: InputLimitSettings, *, source: str,
                             stop_before_pixels: bool = False, budget: ReadBudget | None = None) -> Dataset:
    """``pydicom.dcmread`` of ``fp``, refusing (TooLargeToRead) before pydicom reads it a deflated dataset that
    inflates past ``max_dataset_bytes``, and, with ``budget`` (one series being read), a file that takes more
    than is left of the series' budget."""
    cap = budget.remaining() if budget is not None else max_dataset_bytes(limits)
    nbytes, deflated = dataset_bytes(fp, cap)
    if deflated and nbytes > cap:
        raise TooLargeToRead(f"{source} is deflated and inflates to more than {cap} bytes, over the limit "
                             "(NEUROFLOW_LIMITS__MAX_SERIES_BYTES)")
    if budget is not None:
        _take(budget, nbytes, source)
    return pydicom.dcmread(fp, stop_before_pixels=stop_before_pixels)


def _take(budget: ReadBudget, nbytes: int, source: str) -> None:
    """Counts a file of ``nbytes`` against the series' budget; TooLargeToRead when the series is now over it."""
    if not budget.take(nbytes):
        raise TooLargeToRead(f"the series' files take more than {budget.limit} bytes once read ({source} alone "
                             f"{nbytes}), over the limit (NEUROFLOW_LIMITS__MAX_SERIES_BYTES)")


def _read_within_limits(path: str, limits: InputLimitSettings, *, budget: ReadBudget | None = None) -> Dataset:
    with open(path, "rb") as fp:
        ds = read_dicom_within_limits(fp, limits, source=path, budget=budget)
    ds.filename = path  # as dcmread(path) sets it: messages name the file
    return ds


def _walk(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, _dirs, files in os.walk(root):
        out.extend(os.path.join(dirpath, f) for f in files)
    return out
