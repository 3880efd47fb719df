"""Non-image objects are set aside when a study is indexed, by every DicomSource (a folder; a real Orthanc),
so neither runtime classifies or converts one: a Philips export with a Raw Data Storage object inside the
3D T1's series converts the T1 exactly, and presentation states, key objects, SR, PDFs and our own
secondary captures are listed (which series, how many, what class), never fed to conversion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neuroflow.core.dicom_io import StudyIndex, find_series, study_key
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.devtools.non_image_objects import (
    NON_IMAGE_CLASSES,
    write_non_image,
    write_our_secondary_capture,
    write_raw_data,
)
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.ingest.classify import classify_study
from neuroflow.proto.neuroflow.v1 import common_pb2
from tests.contract.test_dicom_store_contract import BACKENDS, DicomStoreUnderTest, store

__all__ = ["BACKENDS", "store"]  # the backends' fixture, shared with the DICOM store contract

GLIOMA_T1C = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"


@pytest.fixture(scope="module")
def t1() -> Volume:
    full = load_volume(GLIOMA_T1C)
    return Volume.from_sitk(full.to_sitk()[90:154, 100:164, 60:72])


def _philips_export(t1: Volume, folder: Path) -> tuple[str, str, list[Path]]:
    """(study UID, T1 series UID, every file): the T1 with a raw object inside its series, and one
    non-image object of each other kind in series of their own."""
    written = write_study({SeriesRole.T1: t1}, folder / "images", vendor=Vendor.PHILIPS, seed="philips-raw")
    series = written.series[SeriesRole.T1]
    first = series.paths[0]
    extra = [write_raw_data(first, folder / "raw" / "XX_0001")]
    for n, kind in enumerate(NON_IMAGE_CLASSES):
        extra.append(write_non_image(first, folder / "other" / f"XX_{n + 2:04d}", kind, series_number=9001 + n))
    extra.append(write_our_secondary_capture(first, folder / "other" / "XX_0099", series_number=9901))
    return written.study_instance_uid, series.series_instance_uid, [*series.paths, *extra]


def _indexed(store: DicomStoreUnderTest, files: list[Path], root: Path, study_uid: str) -> StudyIndex:
    for path in files:
        assert store.deposit(str(path.relative_to(root)), path.read_bytes())
    study, _skipped = store.source.index_study(study_uid)
    assert study is not None
    return study


def test_raw_data_in_the_t1_series_is_set_aside_and_the_t1_converts_exactly(
    store: DicomStoreUnderTest, t1: Volume, tmp_path: Path
) -> None:
    study_uid, t1_uid, files = _philips_export(t1, tmp_path / "export")
    study = _indexed(store, files, tmp_path / "export", study_uid)

    assert list(study.series) == [t1_uid]  # the other series held nothing but non-image objects
    series = study.series[t1_uid]
    assert len(series.headers) == len(series.paths) == t1.geometry.size[2]
    (classified,) = classify_study([series])
    assert classified.role == SeriesRole.T1

    volume = series_to_volume(store.source.read_instances(series), study_key=study_key(study_uid))
    np.testing.assert_array_equal(volume.array, t1.array.astype(np.float32))
    np.testing.assert_allclose(volume.geometry.origin, t1.geometry.origin, atol=1e-4)
    np.testing.assert_allclose(volume.geometry.direction, t1.geometry.direction, atol=1e-6)


def test_every_set_aside_object_is_listed_by_series_count_and_class(
    store: DicomStoreUnderTest, t1: Volume, tmp_path: Path
) -> None:
    study_uid, t1_uid, files = _philips_export(t1, tmp_path / "export")
    study = _indexed(store, files, tmp_path / "export", study_uid)

    listed = {(item.series_number, item.what, item.count) for item in study.set_aside}
    t1_number = study.series[t1_uid].headers[0].SeriesNumber
    assert listed == {
        (t1_number, "Raw Data Storage", 1),
        (9001, "Grayscale Softcopy Presentation State Storage", 1),
        (9002, "Key Object Selection Document Storage", 1),
        (9003, "Basic Text SR Storage", 1),
        (9004, "Encapsulated PDF Storage", 1),
        (9901, "neuroflow result", 1),
    }
    raw = next(item for item in study.set_aside if item.what == "Raw Data Storage")
    assert raw.series_instance_uid == t1_uid
    notes = study.set_aside_notes()
    assert f"set aside 1 Raw Data Storage object in series {t1_number} ({raw.series_description}): " \
           "not an image, not converted" in notes
    assert all(study_uid not in note and "NF-DEMO" not in note for note in notes)


def test_the_workers_lookup_of_routed_series_hands_on_the_set_aside_notes(
    store: DicomStoreUnderTest, t1: Volume, tmp_path: Path
) -> None:
    """What the distributed results worker puts in report.json: find_series, as the workers call it."""
    study_uid, t1_uid, files = _philips_export(t1, tmp_path / "export")
    study = _indexed(store, files, tmp_path / "export", study_uid)
    ref = common_pb2.StudyRef(study_instance_uid=study_uid, study_key=study_key(study_uid))
    notes: list[str] = []
    found = find_series(store.source, ref, [common_pb2.SeriesRef(series_instance_uid=t1_uid, role="T1",
                                                                 instance_count=t1.geometry.size[2])],
                        stage="results", notes=notes)
    assert len(found[SeriesRole.T1].headers) == t1.geometry.size[2]
    assert notes == study.set_aside_notes() and len(notes) == 6
