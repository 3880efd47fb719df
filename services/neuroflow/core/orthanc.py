"""Orthanc as DICOM source and sink: a small REST client over the standard library, and the
DicomSource / DicomSink backends the distributed runtime uses (the embedded one uses a folder).

What travels where: headers come from the DICOMweb plugin's study metadata (one request per study,
bulk data left out), pixels from ``/instances/{id}/file`` (the object exactly as stored), results go
in by ``POST /instances`` and on to the destination PACS by C-STORE (``/modalities/{name}/store``).
Connection failures are retried with backoff, then reported as OrthancUnavailable naming the URL;
an answer that refuses the request is OrthancRequestFailed with Orthanc's own explanation.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from pydicom.filewriter import dcmwrite

from neuroflow.core.config import DicomSettings, InputLimitSettings
from neuroflow.core.dicom_io import (
    DicomSink,
    DicomSource,
    SeriesInstances,
    SkippedFile,
    StudyIndex,
    TooLargeToRead,
    read_dicom_within_limits,
    set_aside_non_images,
    study_key,
)
from neuroflow.core.errors import (
    DestinationRejected,
    DestinationUnavailable,
    InputLimitExceeded,
    OrthancRequestFailed,
    OrthancUnavailable,
    SeriesRejected,
)
from neuroflow.core.identity import uid_key
from neuroflow.core.input_limits import ReadBudget

log = logging.getLogger(__name__)

_PIXEL_DATA_TAGS = {"7FE00010", "7FE00008", "7FE00009"}  # PixelData, FloatPixelData, DoubleFloatPixelData


@dataclass(frozen=True)
class OrthancEndpoint:
    """How to reach one Orthanc: its REST API and its DICOM side."""

    url: str  # e.g. http://127.0.0.1:8042, no trailing slash
    username: str
    password: str
    aet: str = ""
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 0
    # HTTPS: the CA bundle the server's certificate is verified against ("" : the system's CAs), and this
    # client's own certificate and key when the server asks for one ("": none).
    ca_file: str = ""
    client_cert: str = ""
    client_key: str = ""

    @classmethod
    def from_settings(cls, dicom: DicomSettings) -> OrthancEndpoint:
        """The site Orthanc as this process's settings describe it (its own user, password and CA)."""
        return cls(url=dicom.orthanc_url, username=dicom.orthanc_username,
                   password=dicom.orthanc_password.get_secret_value(),
                   ca_file=str(dicom.orthanc_ca_file or ""), client_cert=str(dicom.orthanc_client_cert or ""),
                   client_key=str(dicom.orthanc_client_key or ""))

    @property
    def http_port(self) -> int:
        port = urllib.parse.urlsplit(self.url).port
        return port if port is not None else 80


def client_ssl_context(endpoint: OrthancEndpoint) -> ssl.SSLContext | None:
    """The TLS context an HTTPS endpoint is reached with: the server's certificate verified (chain and host
    name) against ``ca_file``, or the system's CAs without one; never unverified. None for plain HTTP."""
    if not endpoint.url.lower().startswith("https:"):
        return None
    context = ssl.create_default_context(cafile=endpoint.ca_file or None)
    if endpoint.client_cert:
        context.load_cert_chain(endpoint.client_cert, endpoint.client_key or None)
    return context


@dataclass(frozen=True)
class DicomModality:
    """A DICOM peer an Orthanc may C-STORE to (declared under DicomModalities in its configuration)."""

    aet: str
    host: str
    port: int


@dataclass(frozen=True)
class Change:
    """One entry of Orthanc's change feed (``/changes``)."""

    seq: int
    change_type: str  # NewInstance, NewSeries, NewStudy, StableSeries, StableStudy, Deleted, ...
    resource_type: str  # Instance, Series, Study, Patient
    resource_id: str  # Orthanc's id of the resource
    path: str  # REST path of the resource, e.g. /studies/<id>
    date: str  # Orthanc's timestamp, YYYYMMDDTHHMMSS


class OrthancClient:
    """Typed access to one Orthanc's REST API.

    Every request has a timeout. A failure to connect (refused, reset, timed out) is retried
    ``retries`` times with exponential backoff from ``backoff_s``, then raised as OrthancUnavailable
    naming the URL and the operation; an HTTP error answer is raised at once as OrthancRequestFailed
    (5xx answers included: Orthanc answers them for a request it cannot carry out, not for overload)."""

    def __init__(self, endpoint: OrthancEndpoint, *, timeout_s: float = 30.0, retries: int = 3,
                 backoff_s: float = 0.2) -> None:
        self.endpoint = endpoint
        self._base = endpoint.url.rstrip("/")
        token = base64.b64encode(f"{endpoint.username}:{endpoint.password}".encode()).decode()
        self._auth = f"Basic {token}"
        self._context = client_ssl_context(endpoint)
        self._timeout = timeout_s
        self._retries = retries
        self._backoff = backoff_s

    # -- raw requests ---------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, body: bytes | None = None, content_type: str | None = None,
                accept: str | None = None, timeout_s: float | None = None, what: str = "") -> bytes:
        """The body of the answer to ``method path``; raises as the class docstring says."""
        url = f"{self._base}{path}"
        headers = {"Authorization": self._auth}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        doing = what or f"{method} {path}"
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=body, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout_s or self._timeout,
                                            context=self._context) as answer:
                    data: bytes = answer.read()
                    return data
            except urllib.error.HTTPError as error:
                details = _orthanc_error_text(error.read())
                # A refused right is granted per method and path (core.orthanc_rights): name them, not only what.
                asked = f" ({method} {path.split('?')[0]})" if what else ""
                raise OrthancRequestFailed(
                    f"Orthanc {self._base} refused to {doing}{asked}: HTTP {error.code} {details}", status=error.code
                ) from error
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, ssl.SSLCertVerificationError):  # trying again will not change the answer
                    raise OrthancUnavailable(f"Orthanc at {url}: its certificate is not trusted, could not {doing}: "
                                             f"{reason.verify_message}") from error
                if attempt >= self._retries:
                    raise OrthancUnavailable(
                        f"Orthanc at {url} unavailable, could not {doing} after {attempt + 1} attempts: {reason}"
                    ) from error
                time.sleep(self._backoff * (2**attempt))
                attempt += 1

    def get_json(self, path: str, *, what: str = "") -> Any:
        return json.loads(self.request("GET", path, accept="application/json", what=what))

    def get_json_unless_gone(self, path: str, *, what: str = "") -> Any | None:
        """``get_json``, or None when Orthanc answers 404: the resource was deleted (the change feed outlives
        its resources). Every other failure (unreachable, timed out, 5xx, a refusal) raises as ``request``
        says: it tells nothing about whether the resource exists."""
        try:
            return self.get_json(path, what=what)
        except OrthancRequestFailed as error:
            if error.status == 404:
                return None
            raise

    def post_json(self, path: str, payload: object, *, timeout_s: float | None = None, what: str = "") -> Any:
        answer = self.request("POST", path, body=json.dumps(payload).encode(), content_type="application/json",
                              timeout_s=timeout_s, what=what)
        return json.loads(answer) if answer.strip() else None

    # -- typed operations -----------------------------------------------------------------------------

    def system(self) -> dict[str, Any]:
        """``/system``: name, version, AE title, ports. Proves the server answers and the credentials work."""
        answer: dict[str, Any] = self.get_json("/system", what="read /system")
        return answer

    def upload(self, part10: bytes) -> str:
        """Store one DICOM Part-10 file; returns Orthanc's instance id. OrthancRequestFailed (HTTP 400)
        for bytes Orthanc cannot take as DICOM."""
        answer = json.loads(self.request("POST", "/instances", body=part10, content_type="application/dicom",
                                         what="store an instance"))
        instance_id: str = answer["ID"]
        return instance_id

    def lookup(self, uid: str) -> list[dict[str, str]]:
        """``/tools/lookup``: the resources (Type, ID, Path) whose DICOM UID is ``uid``."""
        found: list[dict[str, str]] = self.post_json_text("/tools/lookup", uid,
                                                          what=f"look up UID (key {uid_key(uid)})")
        return found

    def post_json_text(self, path: str, text: str, *, what: str) -> Any:
        return json.loads(self.request("POST", path, body=text.encode(), content_type="text/plain", what=what))

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """Changes after sequence number ``since`` (at most ``limit``): (changes, last, done). ``last`` is
        the sequence to pass as ``since`` next time; ``done`` says the feed is read to its end."""
        answer = self.get_json(f"/changes?since={since}&limit={limit}", what="read the change feed")
        changes = [Change(int(c["Seq"]), c["ChangeType"], c["ResourceType"], c["ID"], c["Path"], c["Date"])
                   for c in answer["Changes"]]
        return changes, int(answer["Last"]), bool(answer["Done"])

    def instance_file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file", accept="application/dicom",
                            what=f"download instance {instance_id}")

    def delete_everything(self) -> None:
        """Delete every patient (so every study and instance): for tests and the local stack only."""
        for patient in self.get_json("/patients", what="list patients"):
            self.request("DELETE", f"/patients/{patient}", what=f"delete patient {patient}")

    def store_to_modality(self, modality: str, resources: Sequence[str], *, timeout_s: float) -> None:
        """C-STORE the Orthanc ``resources`` (instance/series/study ids) to the declared ``modality``,
        synchronously. DestinationUnavailable when the peer cannot be reached or does not answer within
        ``timeout_s``; DestinationRejected when it answers and refuses; OrthancRequestFailed when this
        Orthanc refuses the request itself (unknown modality or resource)."""
        if not resources:
            return
        payload = {"Resources": list(resources), "Synchronous": True, "Timeout": max(1, round(timeout_s))}
        try:
            # This Orthanc waits up to timeout_s for the peer; give its answer a margin to arrive.
            self.post_json(f"/modalities/{modality}/store", payload, timeout_s=timeout_s + self._timeout,
                           what=f"C-STORE {len(resources)} resources to modality {modality}")
        except OrthancRequestFailed as error:
            text = str(error)
            if error.status == 404 or "Inexistent" in text or "unknown" in text.lower():
                raise
            if _is_network_failure(text) and "rejected" not in text.lower():
                raise DestinationUnavailable(f"destination {modality} unavailable: {text}") from error
            raise DestinationRejected(f"destination {modality} refused the objects: {text}") from error


class OrthancDicomSource(DicomSource):
    """The studies held by one Orthanc. ``SeriesInstances.paths`` hold each instance's REST URL
    (``<url>/instances/<id>``), so a log line points at the object a person can open."""

    def __init__(self, client: OrthancClient, *, download_threads: int = 4,
                 limits: InputLimitSettings | None = None) -> None:
        self._client = client
        self._threads = download_threads
        self.limits = limits or InputLimitSettings()

    def index(self) -> tuple[dict[str, StudyIndex], list[SkippedFile]]:
        studies: dict[str, StudyIndex] = {}
        skipped: list[SkippedFile] = []
        for orthanc_id in self._client.get_json("/studies", what="list studies"):
            study, missed = self._index_orthanc_study(orthanc_id)
            skipped.extend(missed)
            if study is not None:
                studies[study.study_instance_uid] = study
        return studies, skipped

    def index_study(self, study_instance_uid: str) -> tuple[StudyIndex | None, list[SkippedFile]]:
        """One study's index (None when this Orthanc does not hold it), as ``index`` would give it."""
        for resource in self._client.lookup(study_instance_uid):
            if resource["Type"] == "Study":
                return self._index_orthanc_study(resource["ID"])
        return None, []

    def changes(self, since: int, limit: int = 100) -> tuple[list[Change], int, bool]:
        """The change feed after ``since``: see OrthancClient.changes."""
        return self._client.changes(since, limit)

    def read_instances(self, series: SeriesInstances) -> list[Dataset]:
        """The series' instances as stored, pixels included, in the order of ``series.paths``. Refuses
        (SeriesRejected naming the instance) one Orthanc no longer holds or that pydicom cannot read;
        OrthancUnavailable (retryable) when Orthanc cannot be reached."""

        def read(url: str) -> Dataset:
            instance_id = url.rstrip("/").rsplit("/", 1)[-1]
            try:
                data = self._client.instance_file(instance_id)
            except OrthancRequestFailed as error:
                raise _rejected(series, f"instance {url} can no longer be read from Orthanc: {error}") from error
            try:
                return read_dicom_within_limits(io.BytesIO(data), self.limits, source=url, budget=budget)
            except TooLargeToRead as error:
                raise InputLimitExceeded(study_key(series.study_instance_uid), str(error), limit="max_series_bytes",
                                         stage="read", series_uid=series.series_instance_uid) from None
            except Exception as error:  # pydicom raises many types on damaged files
                raise _rejected(series, f"unreadable DICOM instance {url}: {error}") from error

        self.check_limits(series)  # before downloading: sizes from Orthanc's metadata
        budget = ReadBudget(self.limits)
        with ThreadPoolExecutor(max_workers=self._threads) as pool:
            datasets = list(pool.map(read, series.paths))
        self.check_limits(series, datasets)
        return datasets

    def _index_orthanc_study(self, orthanc_id: str) -> tuple[StudyIndex | None, list[SkippedFile]]:
        study = self._client.get_json(f"/studies/{orthanc_id}", what=f"read study {orthanc_id}")
        study_uid = study["MainDicomTags"].get("StudyInstanceUID", "")
        instances = self._client.get_json(f"/studies/{orthanc_id}/instances",
                                          what=f"list instances of study {orthanc_id}")
        url_of_sop = {i["MainDicomTags"].get("SOPInstanceUID", ""): f"{self._client.endpoint.url}/instances/{i['ID']}"
                      for i in instances}
        metadata = self._client.get_json(f"/dicom-web/studies/{urllib.parse.quote(study_uid)}/metadata",
                                         what=f"read the metadata of study {orthanc_id}")
        index = StudyIndex(study_uid, study.get("PatientMainDicomTags", {}).get("PatientID", ""))
        skipped: list[SkippedFile] = []
        headers: list[tuple[Dataset, str]] = []
        for item in metadata:
            try:
                ds = _header_from_dicom_json(item)
                url = url_of_sop[str(ds.SOPInstanceUID)]
            except Exception as error:  # a header pydicom cannot take, or an instance deleted meanwhile
                skipped.append(SkippedFile(f"{self._client.endpoint.url}/studies/{orthanc_id}",
                                           f"unreadable DICOM header in Orthanc's metadata: {error!r}"))
                continue
            headers.append((ds, url))
        headers.sort(key=lambda h: (_instance_number(h[0]), str(h[0].SOPInstanceUID)))
        for ds, url in headers:
            series_uid = str(ds.get("SeriesInstanceUID", ""))
            series = index.series.setdefault(series_uid, SeriesInstances(study_uid, series_uid))
            series.headers.append(ds)
            series.paths.append(url)
        had_objects = bool(index.series)
        set_aside_non_images(index)
        for item in skipped:
            log.warning("skipped %s: %s", item.path, item.reason)
        return (index if had_objects else None), skipped


class OrthancDicomSink(DicomSink):
    """Stores result objects into one Orthanc (configured with OverwriteInstances, so the same
    SOPInstanceUID again replaces it) and forwards them to a declared DICOM peer by C-STORE."""

    def __init__(self, client: OrthancClient) -> None:
        self._client = client

    def store(self, dataset: Dataset) -> str:
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
        self._client.upload(buffer.getvalue())
        return str(dataset.SOPInstanceUID)

    def stored(self) -> list[str]:
        instances = self._client.get_json("/instances?expand", what="list instances")
        return sorted(str(i["MainDicomTags"]["SOPInstanceUID"]) for i in instances)

    def read_stored(self, sop_instance_uids: Sequence[str]) -> list[Dataset]:
        """The stored objects with these SOPInstanceUIDs, as stored (a retraction reads what it supersedes).
        Refuses (OrthancRequestFailed) a UID this Orthanc does not hold."""
        return [dcmread(io.BytesIO(self._client.instance_file(i))) for i in self._instance_ids(sop_instance_uids)]

    def _instance_ids(self, sop_instance_uids: Sequence[str]) -> list[str]:
        ids: list[str] = []
        for uid in sop_instance_uids:
            found = [r["ID"] for r in self._client.lookup(uid) if r["Type"] == "Instance"]
            if not found:
                raise OrthancRequestFailed(
                    f"Orthanc {self._client.endpoint.url} holds no instance (key {uid_key(uid)})", status=404)
            ids.extend(found)
        return ids

    def forward(self, sop_instance_uids: Sequence[str], modality: str, *, timeout_s: float = 30.0) -> None:
        """C-STORE the instances with these SOPInstanceUIDs to ``modality`` (a peer declared in this
        Orthanc's DicomModalities), waiting for the peer's answer. Refuses (OrthancRequestFailed) a UID
        this Orthanc does not hold; DestinationUnavailable (retry later) or DestinationRejected
        (dead-letter) as OrthancClient.store_to_modality says."""
        ids: list[str] = []
        for uid in sop_instance_uids:
            found = [r["ID"] for r in self._client.lookup(uid) if r["Type"] == "Instance"]
            if not found:
                raise OrthancRequestFailed(
                    f"Orthanc {self._client.endpoint.url} holds no instance (key {uid_key(uid)}) to forward to "
                    f"{modality}",
                    status=404)
            ids.extend(found)
        self._client.store_to_modality(modality, ids, timeout_s=timeout_s)


def _header_from_dicom_json(item: dict[str, Any]) -> Dataset:
    """A pydicom header from one instance's DICOM JSON: pixel data and every value given only by
    reference (BulkDataURI) are left out, as a header read with stop_before_pixels would lack them."""
    kept = {tag: element for tag, element in item.items()
            if tag not in _PIXEL_DATA_TAGS and "BulkDataURI" not in element}
    return Dataset.from_json(kept)


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _rejected(series: SeriesInstances, reason: str) -> SeriesRejected:
    return SeriesRejected(study_key(series.study_instance_uid), reason, stage="convert",
                          series_uid=series.series_instance_uid)


def _orthanc_error_text(body: bytes) -> str:
    """Orthanc's explanation from an error answer (HttpDescribeErrors), else the raw text."""
    try:
        answer = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:500]
    if not isinstance(answer, dict):
        return str(answer)[:500]
    parts = [str(answer.get(key, "")) for key in ("OrthancError", "Details", "Message")]
    return " - ".join(p for p in parts if p) or str(answer)[:500]


# Orthanc's wording when a C-STORE could not reach its peer or the peer did not answer in time. Every
# other failure ("C-STORE to AET ...: Peer aborted Association", a refused association or presentation
# context, a failure status) happened after the peer answered: the peer refuses these objects, and so does
# a peer that rejects the association itself (an AE it does not know: Orthanc words it "connecting to AET
# ...: Association Rejected").
_NETWORK_FAILURE_WORDS = ("connecting to aet", "connection refused", "timeout", "timed out", "no route",
                          "unreachable", "cannot connect")


def _is_network_failure(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _NETWORK_FAILURE_WORDS)
