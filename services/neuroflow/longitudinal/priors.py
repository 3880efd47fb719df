"""Prior studies for the change pipelines: where a patient's earlier studies are, and what neuroflow
remembers about each of the patient's timepoints.

* :class:`PriorLocator` finds the patient's earlier studies in the site's Orthanc by PatientID (REST
  ``/tools/find``, level Study, a StudyDate range) and, when a PACS is configured, asks the PACS for them
  (C-FIND through Orthanc's ``/modalities/{id}/query``) and moves those the site lacks into the site's
  Orthanc (C-MOVE through ``/queries/{id}/answers/{n}/retrieve``). It looks nothing up for a PatientID
  that cannot find one patient (``core.patient_id``), and keeps only the answers about the same patient
  (PatientID and IssuerOfPatientID equal exactly).
* :func:`qualifying_prior` picks, among them, the newest earlier study that qualifies for the same
  pipeline (its series classified the way routing classifies them: the caller passes that selection in,
  since classification belongs to ingest) and says when its protocol differs from the follow-up's.
* :class:`TimepointStore` keeps, per (patient, pipeline), each processed study with the baseline it was
  compared with, and each study waiting for its prior with the wait's deadline. It lives in the state
  database (SQLite or PostgreSQL), not in a process, so a restart loses neither a wait nor the knowledge
  that a newly arrived study is older than one already processed (a late prior, which triggers the pair).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from neuroflow.core import metrics
from neuroflow.core.config import LongitudinalSettings
from neuroflow.core.dicom_io import DicomSource, SeriesInstances, StudyIndex
from neuroflow.core.errors import OrthancRequestFailed, OrthancUnavailable
from neuroflow.core.orthanc import OrthancClient
from neuroflow.core.patient_id import PatientIdentity, same_patient
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sql_statements import PostgresStatements, SqliteStatements, SqlStatements

log = logging.getLogger(__name__)

# The series of ``study`` chosen for ``roles`` the way routing chooses them, or None when the study does not
# qualify (a role is missing). Built from ingest's classifier by the runtime: a service never imports another.
SelectSeries = Callable[[StudyIndex, Sequence[SeriesRole]], dict[SeriesRole, SeriesInstances] | None]


@dataclass(frozen=True)
class StudyAt:
    """A study and when it was acquired, as a sortable ``YYYYMMDDHHMMSS`` string."""

    study_instance_uid: str
    when: str


def acquired_at(study_date: str, study_time: str) -> str:
    """``YYYYMMDDHHMMSS`` from DICOM StudyDate and StudyTime (fractions dropped, a missing time is midnight):
    the order in which a patient's timepoints are compared."""
    date = (study_date or "").strip()[:8].ljust(8, "0")
    clock = (study_time or "").strip().split(".")[0][:6].ljust(6, "0")
    return date + clock


def study_acquired_at(study: StudyIndex) -> str:
    """When ``study`` was acquired, from the headers of its first instance."""
    for series in study.series.values():
        if series.headers:
            head = series.headers[0]
            return acquired_at(str(head.get("StudyDate", "")), str(head.get("StudyTime", "")))
    return acquired_at("", "")


def protocol_of(series: SeriesInstances) -> str:
    """The protocol a series was acquired with: ProtocolName, else its description."""
    head = series.headers[0] if series.headers else None
    if head is None:
        return ""
    return str(head.get("ProtocolName", "") or head.get("SeriesDescription", "")).strip()


@dataclass(frozen=True)
class PriorChoice:
    """The prior a follow-up is compared with: its index, the series chosen for the pipeline's roles, and
    warnings for the report (a protocol that differs from the follow-up's)."""

    study: StudyIndex
    series: dict[SeriesRole, SeriesInstances]
    warnings: list[str]


def qualifying_prior(
    candidates: Sequence[StudyAt],
    followup: StudyAt,
    followup_series: dict[SeriesRole, SeriesInstances],
    roles: Sequence[SeriesRole],
    source: DicomSource,
    select: SelectSeries,
    *,
    patient: PatientIdentity,
) -> PriorChoice | None:
    """The newest of ``candidates`` acquired before ``followup`` whose series qualify for ``roles``, or None.
    A candidate whose headers name another patient than ``patient`` (another PatientID or issuer) is never
    one, wherever it was found.

    Consecutive timepoints are what is compared, so the newest earlier study wins even when an older one
    matches the follow-up's protocol better; a protocol that differs is said in the warnings (a change of
    sequence can look like a change of the disease)."""
    earlier = sorted((c for c in candidates if c.when < followup.when
                      and c.study_instance_uid != followup.study_instance_uid),
                     key=lambda c: (c.when, c.study_instance_uid), reverse=True)
    for candidate in earlier:
        study, _skipped = source.index_study(candidate.study_instance_uid)
        if study is None:
            continue
        if not same_patient(patient, PatientIdentity.of_study(study)):
            metrics.PRIOR_ANSWERS_DISCARDED.labels("another_patient").inc()
            log.warning("a candidate prior is another patient's (PatientID or IssuerOfPatientID differs): skipped")
            continue
        chosen = select(study, roles)
        if chosen is None:
            continue
        warnings = []
        for role, series in chosen.items():
            now, then = protocol_of(followup_series[role]) if role in followup_series else "", protocol_of(series)
            if now and then and now.lower() != then.lower():
                warnings.append(f"the prior's {role} was acquired with protocol {then!r}, the follow-up's with "
                                f"{now!r}: part of a change may be the protocol's")
        return PriorChoice(study, chosen, warnings)
    return None


class PriorLocator:
    """A patient's studies in the site's Orthanc, and the PACS's studies moved into it when configured."""

    def __init__(self, client: OrthancClient, settings: LongitudinalSettings) -> None:
        self._client = client
        self._settings = settings
        self._declared = False

    @property
    def pacs_configured(self) -> bool:
        return self._settings.pacs is not None

    def earliest_date(self, before: str) -> str:
        """The first StudyDate still looked at for a follow-up acquired at ``before``."""
        then = datetime.strptime(before[:8], "%Y%m%d").replace(tzinfo=UTC)
        return (then - timedelta(days=self._settings.prior_lookback_days)).strftime("%Y%m%d")

    def studies_in_site(self, patient: PatientIdentity, before: str) -> list[StudyAt]:
        """The patient's studies the site's Orthanc holds, acquired on or before the day of ``before``; none
        (nothing asked) for a PatientID that cannot find one patient."""
        if patient.problem is not None:
            return []
        answer = self._client.post_json("/tools/find", {
            "Level": "Study", "Expand": True,
            "Query": {"PatientID": patient.patient_id, "StudyDate": f"{self.earliest_date(before)}-{before[:8]}"},
        }, what="find the patient's studies")
        found: list[StudyAt] = []
        for study in answer or []:
            # /tools/find matches PatientID case-insensitively (and * ? as wildcards): keep exact matches. Orthanc
            # 1.10 does not index IssuerOfPatientID: qualifying_prior checks it on the candidate's headers.
            if PatientIdentity.of_tags(study.get("PatientMainDicomTags", {})).patient_id != patient.patient_id:
                metrics.PRIOR_ANSWERS_DISCARDED.labels("another_patient").inc()
                continue
            tags = study.get("MainDicomTags", {})
            found.append(StudyAt(str(tags.get("StudyInstanceUID", "")),
                                 acquired_at(str(tags.get("StudyDate", "")), str(tags.get("StudyTime", "")))))
        return [s for s in found if s.study_instance_uid]

    def retrieve_from_pacs(self, patient: PatientIdentity, before: str, held: set[str], *,
                           study_key: str) -> list[str]:
        """C-FIND the PACS for the patient's studies acquired before ``before`` and C-MOVE each one the site's
        Orthanc does not hold (``held``) into it; the Study Instance UIDs moved. Nothing when no PACS is
        configured or the PatientID cannot find one patient (nothing is asked). An answer about another
        patient (PatientID or IssuerOfPatientID not exactly the follow-up's: a PACS that matches
        case-insensitively or by wildcard) is discarded, never moved. A PACS that cannot be reached, or a move
        that fails, is logged and counts as no prior yet (the wait goes on); it never fails the follow-up."""
        pacs = self._settings.pacs
        if pacs is None or patient.problem is not None:
            return []
        modality = self._settings.pacs_modality
        try:
            self._declare_pacs()
            query = self._client.post_json(f"/modalities/{modality}/query", {
                "Level": "Study",
                "Query": {"PatientID": patient.patient_id, "IssuerOfPatientID": "",
                          "StudyDate": f"{self.earliest_date(before)}-{before[:8]}", "StudyInstanceUID": "",
                          "StudyTime": ""},
            }, what=f"C-FIND the PACS {pacs.aet} for the patient's studies")
            query_id = str(query["ID"])
            answers = self._client.get_json(f"/queries/{query_id}/answers", what="read the C-FIND answers")
            target = str(self._client.system().get("DicomAet", ""))
            moved: list[str] = []
            discarded = 0
            for index in answers:
                tags = self._client.get_json(f"/queries/{query_id}/answers/{index}/content?simplify",
                                             what="read a C-FIND answer")
                if not same_patient(patient, PatientIdentity.of_tags(tags)):
                    discarded += 1
                    continue
                uid = str(tags.get("StudyInstanceUID", ""))
                when = acquired_at(str(tags.get("StudyDate", "")), str(tags.get("StudyTime", "")))
                if not uid or uid in held or when >= before:
                    continue
                self._client.post_json(f"/queries/{query_id}/answers/{index}/retrieve", {
                    "TargetAet": target, "Synchronous": True,
                    "Timeout": max(1, round(self._settings.retrieve_timeout_s)),
                }, timeout_s=self._settings.retrieve_timeout_s + 30.0,
                    what=f"C-MOVE a prior from the PACS {pacs.aet}")
                moved.append(uid)
            if discarded:
                metrics.PRIOR_ANSWERS_DISCARDED.labels("another_patient").inc(discarded)
                log.warning("study %s: the PACS %s answered %d study(ies) of another patient (PatientID or "
                            "IssuerOfPatientID not exactly the follow-up's): discarded", study_key, pacs.aet, discarded)
            return moved
        except (OrthancRequestFailed, OrthancUnavailable, KeyError) as error:
            log.warning("study %s: no prior from the PACS %s this time: %s", study_key, pacs.aet, error)
            return []

    def _declare_pacs(self) -> None:
        """Declare the configured PACS in the site's Orthanc (idempotent), so its C-FIND/C-MOVE can name it."""
        pacs = self._settings.pacs
        if pacs is None or self._declared:
            return
        node = {"AET": pacs.aet, "Host": pacs.host, "Port": pacs.port}
        self._client.request("PUT", f"/modalities/{self._settings.pacs_modality}", body=json.dumps(node).encode(),
                             content_type="application/json", what=f"declare the PACS {pacs.aet}")
        self._declared = True


# -- what neuroflow remembers about a patient's timepoints ----------------------------------------------


class TimepointState(StrEnum):
    WAITING = "waiting"  # no prior yet; waits until its deadline
    EXPIRED = "expired"  # the wait ended without a prior; the run without one has been asked for
    COMPARED = "compared"  # compared with ``baseline_uid``
    ALONE = "alone"  # run without a prior (none within the deadline)


@dataclass(frozen=True)
class PatientTimepoint:
    """One study of a patient as a change pipeline saw it. ``ready`` is the StudyReady (wire bytes) that
    asks for its comparison again, with another baseline, when a late prior arrives or the wait ends."""

    patient_key: str
    pipeline: str
    study_uid: str
    acquired_at: str  # YYYYMMDDHHMMSS
    state: TimepointState
    baseline_uid: str  # "" when none
    baseline_at: str  # "" when none
    wait_deadline: float  # time.time() at which a WAITING study runs without its prior
    ready: bytes


_TABLE = """CREATE TABLE IF NOT EXISTS longitudinal_timepoints (
    patient_key    TEXT NOT NULL,
    pipeline       TEXT NOT NULL,
    study_uid      TEXT NOT NULL,
    acquired_at    TEXT NOT NULL,
    state          TEXT NOT NULL,
    baseline_uid   TEXT NOT NULL DEFAULT '',
    baseline_at    TEXT NOT NULL DEFAULT '',
    wait_deadline  DOUBLE PRECISION NOT NULL DEFAULT 0,
    ready          {blob} NOT NULL,
    PRIMARY KEY (patient_key, pipeline, study_uid)
)"""
_COLUMNS = "patient_key, pipeline, study_uid, acquired_at, state, baseline_uid, baseline_at, wait_deadline, ready"


class TimepointStore(SqlStatements):
    """Per (patient, pipeline): the studies processed or waiting. Every method is one atomic statement, so
    several longitudinal workers may share the store. Every statement but the claim of expired waits may
    run twice after a lost connection (reads, insert-if-absent, upserts of fixed values); that claim is
    not run again when its COMMIT was lost (StoreUnavailable): run twice, the second would find the waits
    the first marked EXPIRED and return none of them."""

    def get(self, patient_key: str, pipeline: str, study_uid: str) -> PatientTimepoint | None:
        rows = self._execute(self._sql(f"SELECT {_COLUMNS} FROM longitudinal_timepoints "
                                       "WHERE patient_key = ? AND pipeline = ? AND study_uid = ?"),
                             (patient_key, pipeline, study_uid), idempotent=True)
        return _timepoint(rows[0]) if rows else None

    def start_wait(self, timepoint: PatientTimepoint) -> float:
        """Record that ``timepoint`` waits for its prior; returns the wait's deadline. A wait already under
        way keeps its first deadline (a re-run of the same study must not extend it)."""
        self._execute(self._sql(
            f"INSERT INTO longitudinal_timepoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (patient_key, pipeline, study_uid) DO NOTHING"), _row(timepoint), idempotent=True)
        current = self.get(timepoint.patient_key, timepoint.pipeline, timepoint.study_uid)
        return current.wait_deadline if current is not None else timepoint.wait_deadline

    def record(self, timepoint: PatientTimepoint) -> None:
        """Record the outcome of a comparison (COMPARED or ALONE), replacing what was known of the study."""
        self._execute(self._sql(
            f"INSERT INTO longitudinal_timepoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (patient_key, pipeline, study_uid) DO UPDATE SET acquired_at = excluded.acquired_at, "
            "state = excluded.state, baseline_uid = excluded.baseline_uid, baseline_at = excluded.baseline_at, "
            "wait_deadline = excluded.wait_deadline, ready = excluded.ready"), _row(timepoint), idempotent=True)

    def newer_than(self, patient_key: str, pipeline: str, when: str) -> list[PatientTimepoint]:
        """The patient's studies acquired after ``when``, oldest first."""
        rows = self._execute(self._sql(
            f"SELECT {_COLUMNS} FROM longitudinal_timepoints WHERE patient_key = ? AND pipeline = ? "
            "AND acquired_at > ? ORDER BY acquired_at, study_uid"), (patient_key, pipeline, when), idempotent=True)
        return [_timepoint(r) for r in rows]

    def claim_expired(self, now: float) -> list[PatientTimepoint]:
        """Every WAITING study whose deadline has passed, marked EXPIRED in the same statement: exactly one
        caller gets each (several longitudinal workers sweep)."""
        rows = self._execute(self._sql(
            "UPDATE longitudinal_timepoints SET state = ? WHERE state = ? AND wait_deadline <= ? "
            f"RETURNING {_COLUMNS}"), (TimepointState.EXPIRED.value, TimepointState.WAITING.value, now))
        return [_timepoint(r) for r in rows]


def _row(t: PatientTimepoint) -> tuple[Any, ...]:
    return (t.patient_key, t.pipeline, t.study_uid, t.acquired_at, t.state.value, t.baseline_uid, t.baseline_at,
            t.wait_deadline, t.ready)


def _timepoint(row: tuple[Any, ...]) -> PatientTimepoint:
    return PatientTimepoint(str(row[0]), str(row[1]), str(row[2]), str(row[3]), TimepointState(str(row[4])),
                            str(row[5]), str(row[6]), float(row[7]), bytes(row[8]))


class SqliteTimepointStore(SqliteStatements, TimepointStore):
    """Embedded and single-host: one SQLite file (WAL) shared by the threads and processes of a machine."""

    def __init__(self, path: Path) -> None:
        self._open(path)
        self._create_tables(_TABLE.format(blob="BLOB"))


class PostgresTimepointStore(PostgresStatements, TimepointStore):
    """Distributed: the site's PostgreSQL (the workflow state's database)."""

    def __init__(self, dsn: str, *, connect_timeout_s: float = 10.0) -> None:
        self._open(dsn, connect_timeout_s=connect_timeout_s)
        self._create_tables(_TABLE.format(blob="BYTEA"))


def wait_deadline(settings: LongitudinalSettings, now: float | None = None) -> float:
    """When a follow-up that starts waiting now runs without its prior."""
    return (time.time() if now is None else now) + settings.prior_wait_s


def describe_wait(seconds: float) -> str:
    """The wait in the unit a person reads it in ("24 h", "30 min", "5 s")."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:g} s"
