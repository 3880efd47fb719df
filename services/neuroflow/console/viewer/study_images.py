"""What the viewer shows of a study, read from the site Orthanc by the console server with its own service
credentials (the ``console`` user, read-only: core/orthanc_rights.py); the browser holds none.

Studies are named by their pseudonymous key (core.identity.study_key), series and SEGs by ``uid_key`` of
their UID: the browser's URLs carry those keys, never a UID. A key is matched to its UID here, by keying the
UIDs Orthanc holds (the same mapping the site's secret gives everywhere else).

An image series is converted by the pipeline's own converter (core/series_volume.py: geometry from the
slices, never assumed) and served as NIfTI; a SEG becomes a label volume on the grid of the series it was
drawn on (seg_labels.py). Both are kept in a small in-memory cache: scrolling never converts twice."""

from __future__ import annotations

import io
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from neuroflow.console.viewer.nifti import nifti_gz
from neuroflow.console.viewer.seg_labels import SegmentColour, seg_label_volume, segment_colours
from neuroflow.core.dicom_io import SeriesInstances, StudyIndex
from neuroflow.core.errors import SeriesRejected, StudyError
from neuroflow.core.identity import study_key, uid_key
from neuroflow.core.orthanc import OrthancClient, OrthancDicomSource
from neuroflow.core.series_volume import series_volumes
from neuroflow.core.volume import Volume
from neuroflow.ingest.classify import classify_series

_PAGE = 500  # studies per request when keys are matched to studies
_CACHE_ENTRIES = 12  # converted volumes kept (a pane's image and labels are two)
_INDEX_TTL_S = 30.0  # a study's index is reused this long: a late series shows up on the next page load


class NotInOrthanc(StudyError):
    """The site Orthanc holds no study, series or SEG by that key (deleted, or never received)."""


@dataclass(frozen=True)
class SeriesEntry:
    key: str  # uid_key of the SeriesInstanceUID
    number: int | None
    description: str
    role: str  # what the classifier makes of it (flair, t1ce, ...), for picking a pane's series
    instances: int


@dataclass(frozen=True)
class SegEntry:
    key: str  # uid_key of the SEG's SeriesInstanceUID
    description: str
    series_key: str  # the series it was drawn on
    segments: tuple[SegmentColour, ...]


@dataclass
class _Study:
    orthanc_id: str
    uid: str
    index: StudyIndex
    segs: dict[str, tuple[SegEntry, str]]  # by key: the entry and the SEG's Orthanc instance id
    read_at: float


class StudyImages:
    """One site Orthanc's studies, as the viewer needs them. Thread-safe (the web server calls it from its
    thread pool)."""

    def __init__(self, client: OrthancClient, *, cache_entries: int = _CACHE_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._source = OrthancDicomSource(client)
        self._clock = clock
        self._lock = threading.Lock()
        self._orthanc_ids: dict[str, tuple[str, str]] = {}  # study key -> (Orthanc id, StudyInstanceUID)
        self._studies: dict[str, _Study] = {}
        self._volumes: OrderedDict[tuple[str, str, str], bytes] = OrderedDict()
        self._cache_entries = cache_entries

    # -- what a study holds ---------------------------------------------------------------------------

    def series(self, key: str) -> list[SeriesEntry]:
        """The study's image series in series-number order (non-images, SEGs included, are left out)."""
        study = self._study(key)
        entries = [_series_entry(s) for s in study.index.series.values()]
        return sorted(entries, key=lambda e: (e.number is None, e.number or 0, e.key))

    def segs(self, key: str) -> list[SegEntry]:
        """The study's SEGs whose source series the study holds."""
        study = self._study(key)
        known = {uid_key(uid) for uid in study.index.series}
        return [entry for entry, _ in study.segs.values() if entry.series_key in known]

    def prior_key(self, key: str) -> str | None:
        """The key of the patient's latest study before this one in the site Orthanc (by StudyDate and
        StudyTime; Orthanc groups a patient's studies by PatientID), or None without one: the baseline a
        longitudinal pair is shown against when the console names none."""
        study = self._study(key)
        this = self._client.get_json(f"/studies/{study.orthanc_id}", what=f"read study {study.orthanc_id}")
        patient = str(this.get("ParentPatient", ""))
        if not patient:
            return None
        when = _when(this)
        earlier = [s for s in self._client.get_json(f"/patients/{patient}/studies",
                                                    what=f"list the studies of patient {patient}")
                   if s.get("ID") != study.orthanc_id and _when(s) < when]
        if not earlier:
            return None
        uid = str(max(earlier, key=_when).get("MainDicomTags", {}).get("StudyInstanceUID", ""))
        return study_key(uid) if uid else None

    # -- what the browser downloads -------------------------------------------------------------------

    def image_nifti(self, key: str, series_key: str) -> bytes:
        """The series as .nii.gz (its first volume when it holds several: echoes, b-values)."""
        return self._cached((key, "image", series_key), lambda: nifti_gz(self._image_volume(key, series_key)))

    def labels_nifti(self, key: str, seg_key: str) -> bytes:
        """The SEG's segments as a .nii.gz label volume on the grid of the series it was drawn on."""
        def build() -> bytes:
            study = self._study(key)
            if seg_key not in study.segs:
                raise NotInOrthanc(key, f"no segmentation {seg_key} in the study", stage="viewer")
            entry, instance_id = study.segs[seg_key]
            seg = pydicom.dcmread(io.BytesIO(self._client.instance_file(instance_id)))
            grid = self._image_volume(key, entry.series_key).geometry
            try:
                return nifti_gz(seg_label_volume(seg, grid))
            except ValueError as error:
                raise SeriesRejected(key, f"segmentation {seg_key} cannot be drawn: {error}", stage="viewer") from error
        return self._cached((key, "labels", seg_key), build)

    # -- inside ---------------------------------------------------------------------------------------

    def _image_volume(self, key: str, series_key: str) -> Volume:
        study = self._study(key)
        series = _series_by_key(study.index, series_key)
        if series is None:
            raise NotInOrthanc(key, f"no image series {series_key} in the study", stage="viewer")
        return series_volumes(self._source.read_instances(series), study_key=key)[0]

    def _cached(self, cache_key: tuple[str, str, str], build: Callable[[], bytes]) -> bytes:
        with self._lock:
            if cache_key in self._volumes:
                self._volumes.move_to_end(cache_key)
                return self._volumes[cache_key]
        data = build()  # outside the lock: converting takes seconds, other panes load meanwhile
        with self._lock:
            self._volumes[cache_key] = data
            while len(self._volumes) > self._cache_entries:
                self._volumes.popitem(last=False)
        return data

    def _study(self, key: str) -> _Study:
        now = self._clock()
        with self._lock:
            cached = self._studies.get(key)
        if cached is not None and now - cached.read_at < _INDEX_TTL_S:
            return cached
        orthanc_id, uid = self._orthanc_study(key)
        index, _skipped = self._source.index_study(uid)
        if index is None:
            raise NotInOrthanc(key, "the site Orthanc holds no images of the study", stage="viewer")
        study = _Study(orthanc_id, uid, index, self._read_segs(orthanc_id), now)
        with self._lock:
            self._studies[key] = study
        return study

    def _orthanc_study(self, key: str) -> tuple[str, str]:
        """(Orthanc id, StudyInstanceUID) of the study with ``key``; the table of keys is rebuilt on a miss
        (a study received since)."""
        with self._lock:
            known = self._orthanc_ids.get(key)
        if known is not None:
            return known
        table: dict[str, tuple[str, str]] = {}
        since = 0
        while True:
            page: list[dict[str, Any]] = self._client.get_json(f"/studies?expand&since={since}&limit={_PAGE}",
                                                               what="list studies for the viewer")
            for item in page:
                uid = str(item.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
                if uid:
                    table[study_key(uid)] = (str(item["ID"]), uid)
            if len(page) < _PAGE:
                break
            since += len(page)
        with self._lock:
            self._orthanc_ids = table
        if key not in table:
            raise NotInOrthanc(key, "the site Orthanc holds no study with this key", stage="viewer")
        return table[key]

    def _read_segs(self, orthanc_id: str) -> dict[str, tuple[SegEntry, str]]:
        """The study's SEG objects, each read once for its header (segments, source series)."""
        found: dict[str, tuple[SegEntry, str]] = {}
        for series in self._client.get_json(f"/studies/{orthanc_id}/series?expand",
                                            what=f"list the series of study {orthanc_id}"):
            tags = series.get("MainDicomTags", {})
            if tags.get("Modality") != "SEG" or not series.get("Instances"):
                continue
            instance_id = str(series["Instances"][0])
            seg = pydicom.dcmread(io.BytesIO(self._client.instance_file(instance_id)), stop_before_pixels=True)
            references = seg.get("ReferencedSeriesSequence") or []
            source_uid = str(references[0].get("SeriesInstanceUID", "")) if references else ""
            if not source_uid:
                continue  # a SEG without a source series has nothing to be drawn on
            key = uid_key(str(tags.get("SeriesInstanceUID", "")))
            found[key] = (SegEntry(key, str(tags.get("SeriesDescription", "")), uid_key(source_uid),
                                   tuple(segment_colours(seg))), instance_id)
        return found


def _when(study: dict[str, Any]) -> tuple[str, str]:
    tags = study.get("MainDicomTags", {})
    return str(tags.get("StudyDate", "")), str(tags.get("StudyTime", ""))


def _series_by_key(index: StudyIndex, series_key: str) -> SeriesInstances | None:
    for uid, series in index.series.items():
        if uid_key(uid) == series_key:
            return series
    return None


def _series_entry(series: SeriesInstances) -> SeriesEntry:
    first: Dataset = series.headers[0]
    number = first.get("SeriesNumber")
    return SeriesEntry(uid_key(series.series_instance_uid), int(number) if number not in (None, "") else None,
                       str(first.get("SeriesDescription", "") or ""),
                       str(classify_series(first, len(series.headers)).role), len(series.headers))

