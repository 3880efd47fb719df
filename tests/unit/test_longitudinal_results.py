"""The change result objects on a real FLAIR and a CT written as DICOM: the new-lesion SEG and the
haematoma SEG are valid (dciodvfy) and decode onto the right source slices; the colour overlay series
lies on the source slices (same frame of reference, positions) and shows new lesions vermillion and rejected
candidates blue (Okabe-Ito) under a burned-in banner and legend; a rerun gives the same UIDs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from neuroflow.core.labels import OTHER_BLOOD_SEGMENT, ChangeLabel
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.devtools.dicom_writer import PatientInfo, load_volume, write_study
from neuroflow.results.longitudinal_results import change_overlay, haematoma_seg, ms_lesion_seg
from neuroflow.results.report import (
    DiametersMm,
    HaematomaSection,
    LongitudinalReport,
    NewLesionEntry,
    ReportStatus,
    StudyReport,
    render_summary,
)

FLAIR = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294" / "fla_bet.nii.gz"
HASH = "f" * 64


def _downsampled(volume: Volume, spacing_mm: float) -> Volume:
    g = volume.geometry
    size = tuple(max(1, int(n * s / spacing_mm)) for n, s in zip(g.size, g.spacing, strict=True))
    grid = Geometry((spacing_mm,) * 3, g.origin, g.direction, (size[0], size[1], size[2]))
    out = resample(volume, grid)
    return out.with_array(np.round(out.array).astype(np.int16))


@pytest.fixture(scope="module")
def flair_series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, list[Dataset]]:
    """A real FLAIR at 3 mm, written as a DICOM series and read back: (volume, instances)."""
    folder = tmp_path_factory.mktemp("flair")
    written = write_study({SeriesRole.FLAIR: _downsampled(load_volume(FLAIR), 3.0)}, folder,
                          patient=PatientInfo(patient_id="NF-LONG-1"), seed="results-flair")
    instances: list[Dataset] = [pydicom.dcmread(p) for p in written.series[SeriesRole.FLAIR].paths]
    return series_to_volume(instances, study_key="test"), instances


def _change_labels(image: Volume) -> Volume:
    """A new lesion (label 1) in one hemisphere and a rejected candidate (label 2) in the other."""
    labels = np.zeros(image.array.shape, dtype=np.uint8)
    k, j, i = (n // 2 for n in image.array.shape)
    labels[k - 1:k + 2, j - 2:j + 2, i - 8:i - 5] = ChangeLabel.NEW_LESION
    labels[k:k + 2, j:j + 2, i + 6:i + 8] = ChangeLabel.REJECTED_CANDIDATE
    return image.with_array(labels)


def _dciodvfy_errors(path: Path) -> list[str]:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')")
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _decoded(seg_path: Path, instances: list[Dataset], image: Volume, segment: int = 1) -> npt.NDArray[np.bool_]:
    """The SEG's ``segment`` on the source grid, slice by slice via the instances it references."""
    seg = hd.seg.segread(seg_path)
    by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(_slice_order(instances, image))}
    referenced = [ref.ReferencedSOPInstanceUID for ref in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=referenced, segment_numbers=[segment])
    decoded = np.zeros(image.array.shape, dtype=bool)
    for uid, frame in zip(referenced, frames, strict=True):
        decoded[by_uid[str(uid)]] = frame[..., 0] > 0
    return decoded


def _slice_order(instances: list[Dataset], image: Volume) -> list[Dataset]:
    to_index = np.linalg.inv(image.geometry.index_to_patient())
    return sorted(instances, key=lambda ds: (to_index @ [*map(float, ds.ImagePositionPatient), 1.0])[2])


def test_new_lesion_seg_is_valid_and_decodes_onto_the_followup_slices(
    flair_series: tuple[Volume, list[Dataset]], tmp_path: Path
) -> None:
    image, instances = flair_series
    labels = _change_labels(image)
    seg = ms_lesion_seg(labels, instances, input_hash=HASH)
    assert seg is not None
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    decoded = _decoded(path, instances, image)
    # Only the new lesion is in the SEG; the rejected candidate is not.
    assert np.array_equal(decoded, labels.array == ChangeLabel.NEW_LESION)
    assert seg.SegmentSequence[0].SegmentLabel == "New or enlarging lesion"
    assert "not for diagnosis" in seg.SeriesDescription
    assert seg.FrameOfReferenceUID == instances[0].FrameOfReferenceUID


def test_no_new_lesion_gives_no_seg(flair_series: tuple[Volume, list[Dataset]]) -> None:
    image, instances = flair_series
    only_rejected = image.with_array(np.where(_change_labels(image).array == 2, 2, 0).astype(np.uint8))
    assert ms_lesion_seg(only_rejected, instances, input_hash=HASH) is None


def test_rerun_gives_the_same_uids_and_another_input_other_uids(flair_series: tuple[Volume, list[Dataset]]) -> None:
    image, instances = flair_series
    labels = _change_labels(image)
    first, again = (ms_lesion_seg(labels, instances, input_hash=HASH) for _ in range(2))
    other = ms_lesion_seg(labels, instances, input_hash="0" * 64)
    assert first is not None and again is not None and other is not None
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    overlay_a = change_overlay(image, labels, instances, input_hash=HASH)
    overlay_b = change_overlay(image, labels, instances, input_hash=HASH)
    assert [ds.SOPInstanceUID for ds in overlay_a] == [ds.SOPInstanceUID for ds in overlay_b]


def test_overlay_lies_on_the_source_slices_with_vermillion_new_and_blue_rejected(
    flair_series: tuple[Volume, list[Dataset]], tmp_path: Path
) -> None:
    image, instances = flair_series
    labels = _change_labels(image)
    overlay = change_overlay(image, labels, instances, input_hash=HASH)
    assert len(overlay) == image.geometry.size[2]
    ordered = _slice_order(instances, image)
    for k, ds in enumerate(overlay):
        assert ds.FrameOfReferenceUID == ordered[k].FrameOfReferenceUID
        assert list(map(float, ds.ImagePositionPatient)) == list(map(float, ordered[k].ImagePositionPatient))
        assert list(map(float, ds.ImageOrientationPatient)) == list(map(float, ordered[k].ImageOrientationPatient))
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ordered[k].SOPInstanceUID
    assert "AI" in overlay[0].SeriesDescription and "review" in overlay[0].SeriesDescription
    assert len({ds.SeriesInstanceUID for ds in overlay}) == 1
    path = tmp_path / "overlay.dcm"
    overlay[len(overlay) // 2].save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []

    pixels = np.stack([ds.pixel_array for ds in overlay])
    assert pixels.shape == (*image.array.shape, 3)
    new = labels.array == ChangeLabel.NEW_LESION
    rejected = labels.array == ChangeLabel.REJECTED_CANDIDATE
    red, green, blue = (pixels[..., c].astype(int) for c in range(3))
    assert np.all(red[new] > blue[new] + 50)  # vermillion (213, 94, 0)
    assert np.all(blue[rejected] > red[rejected] + 50)  # blue (0, 114, 178)
    assert overlay[0].BurnedInAnnotation == "YES"
    # Away from the burned-in banner (top) and legend (bottom left), unlabelled pixels stay grey.
    elsewhere = ~(new | rejected)
    elsewhere[:, : image.array.shape[1] // 4] = False
    elsewhere[:, -image.array.shape[1] // 3:, : image.array.shape[2] // 2] = False
    assert np.array_equal(red[elsewhere], green[elsewhere]) and np.array_equal(green[elsewhere], blue[elsewhere])


def test_overlay_refuses_labels_on_another_grid(flair_series: tuple[Volume, list[Dataset]]) -> None:
    image, instances = flair_series
    shifted = Geometry(image.geometry.spacing, (image.geometry.origin[0] + 3.0, *image.geometry.origin[1:]),
                       image.geometry.direction, image.geometry.size)
    with pytest.raises(ValueError, match="not on the grid"):
        change_overlay(image, Volume(_change_labels(image).array, shifted), instances, input_hash=HASH)


def test_haematoma_seg_on_ct_is_valid_and_decodes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    hu = rng.normal(30.0, 4.0, (12, 40, 40)).astype(np.float32)
    hu[:, :, :4] = -1000.0
    ct = Volume(hu, Geometry((0.6, 0.6, 5.0), (-12.0, -12.0, -30.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), (40, 40, 12)))
    written = write_study({SeriesRole.CT: ct}, tmp_path / "ct", seed="results-ct", study_date="20240102")
    instances: list[Dataset] = [pydicom.dcmread(p) for p in written.series[SeriesRole.CT].paths]
    image = series_to_volume(instances, study_key="test")
    assert abs(float(image.array[5, 20, 20]) - float(hu[5, 20, 20])) < 0.05  # HU via RescaleSlope/Intercept
    mask = np.zeros(image.array.shape, dtype=np.uint8)
    mask[4:8, 15:25, 18:26] = 1
    seg = haematoma_seg(image.with_array(mask), instances, input_hash=HASH, timepoint="follow-up")
    assert seg is not None
    path = tmp_path / "haematoma.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    assert np.array_equal(_decoded(path, instances, image), mask > 0)
    assert "follow-up" in seg.SeriesDescription
    baseline = haematoma_seg(image.with_array(mask), instances, input_hash=HASH, timepoint="baseline")
    assert baseline is not None and baseline.SOPInstanceUID != seg.SOPInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Haematoma"]

    # Another blood region beside the haematoma: a second segment, each decoding to its own voxels.
    both = mask.copy()
    both[2:4, 28:34, 28:34] = OTHER_BLOOD_SEGMENT.number
    two = haematoma_seg(image.with_array(both), instances, input_hash=HASH, timepoint="follow-up")
    assert two is not None
    assert [s.SegmentLabel for s in two.SegmentSequence] == ["Haematoma", "Other blood-density region"]
    path = tmp_path / "haematoma-two.dcm"
    two.save_as(path, enforce_file_format=True)
    assert _dciodvfy_errors(path) == []
    assert np.array_equal(_decoded(path, instances, image, 1), both == 1)
    assert np.array_equal(_decoded(path, instances, image, 2), both == OTHER_BLOOD_SEGMENT.number)
    # Without a haematoma there is no SEG, whatever else is there.
    assert haematoma_seg(image.with_array((both == 2).astype(np.uint8) * 2), instances, input_hash=HASH,
                         timepoint="baseline") is None


def _section(**update: object) -> LongitudinalReport:
    return LongitudinalReport(baseline_study_instance_uid="1.1", followup_study_instance_uid="1.2",
                              baseline_study_date="20230101", followup_study_date="20240101", **update)  # type: ignore[arg-type]


def test_sections_of_two_pipelines_on_one_pair_merge_and_the_summary_shows_both() -> None:
    ms = _section(pipelines=["ms_change"], not_run={"haematoma_change": "no CT"},
                  new_lesions=[NewLesionEntry(centroid_mm=(10.0, -20.5, 30.0), volume_mm3=42.0,
                                              location="Frontal_Sup_L (AAL)")],
                  new_lesion_count=1, new_activity=True, rejected_candidates=2)
    ich = _section(pipelines=["haematoma_change"], haematoma=HaematomaSection(
        baseline_ml=20.0, followup_ml=30.5, change_ml=10.5, change_pct=52.5, expansion=True, centroid_shift_mm=2.1,
        diameters=DiametersMm(ap_mm=40.0, lr_mm=30.0, cc_mm=25.0), regularity=0.81, others_ml=[3.2, 0.8]))
    merged = ms.merged(ich)
    assert merged.pipelines == ["ms_change", "haematoma_change"] and merged.not_run == {}
    assert merged.new_lesion_count == 1 and merged.haematoma is not None
    with pytest.raises(ValueError, match="two different pairs"):
        merged.merged(ich.model_copy(update={"followup_study_instance_uid": "9.9"}))
    report = StudyReport(study_instance_uid="1.2", study_key="k", pipeline="longitudinal",
                         status=ReportStatus.SUCCEEDED, longitudinal=merged)
    summary = render_summary(report)
    assert "MS new activity: YES (1 new/enlarging lesion(s))" in summary
    assert "(10.0, -20.5, 30.0) mm LPS, Frontal_Sup_L (AAL)" in summary
    assert "Haematoma: 20.0 -> 30.5 mL (+10.5 mL, +52 %), centroid shift 2.1 mm; expansion: YES" in summary
    assert "other blood at follow-up: 3.2, 0.8 mL" in summary and "other blood at baseline" not in summary
    assert StudyReport.model_validate_json(report.model_dump_json()) == report


def test_a_failed_report_carries_no_longitudinal_results() -> None:
    with pytest.raises(ValueError, match="longitudinal"):
        StudyReport(study_instance_uid="1.2", study_key="k", pipeline="longitudinal", status=ReportStatus.FAILED,
                    errors=["no date"], longitudinal=_section())
