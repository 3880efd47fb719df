"""What reaches the radiologist (issue 13, section 4): the SR says what report.json says, the colour overlays
carry a burned-in legend and banner on the source geometry, a notice is made when nothing was found or the
study failed, SEG segments are coded per sub-region, every UID lies under the site's root, and a re-run on
other inputs is the next version naming the one it supersedes. Every object passes dciodvfy and reads back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.labels import GLIOMA_SEGMENTS, OKABE_ITO, REGION_CODES, BratsLabel
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.uids import derived_uid
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import PatientInfo, write_study
from neuroflow.results.dicom_sr import SR_DISCLAIMER, SR_FILE, ms_change_sr, sr_texts
from neuroflow.results.glioma_results import (
    FLAIR_OVERLAY_FOLDER,
    SEG_FILE,
    T1CE_OVERLAY_FOLDER,
    Supersedes,
    earlier_result,
    glioma_objects,
)
from neuroflow.results.notice import (
    FAILED_HEADLINE,
    NOTHING_FOUND_HEADLINE,
    NOTICE_IMAGE_FILE,
    NOTICE_SR_FILE,
    failure_hash,
    notice_objects,
    notice_of,
)
from neuroflow.results.overlay import BANNER, FLAG_BAND_RGB
from neuroflow.results.report import (
    LongitudinalReport,
    NewLesionEntry,
    ReportStatus,
    ReviewAssessment,
    StudyReport,
    TumourVolumes,
    render_summary,
)

MODEL = ModelRef(name="glioma_unet", version=2)
SITE = ResultObjectSettings(uid_root="1.2.999.42.", seg_series_number=801, sr_series_number=802,
                            t1ce_overlay_series_number=803, flair_overlay_series_number=804)
HASH = "a" * 64
SHAPE = (14, 96, 88)  # slices, rows, columns: small, all different


def _dciodvfy_errors(dataset: Dataset, tmp: Path) -> list[str]:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')")
    path = tmp / f"{dataset.SOPInstanceUID}.dcm"
    dataset.save_as(path, enforce_file_format=True)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    pydicom.dcmread(path)  # and it reads back
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[SeriesRole, list[Dataset]]:
    """A small T1CE and FLAIR written as a DICOM study and read back (pixels included)."""
    rng = np.random.default_rng(3)
    geometry = Geometry((1.5, 1.2, 3.0), (-27.0, -24.0, -20.0), (1, 0, 0, 0, 1, 0, 0, 0, 1),
                        (SHAPE[2], SHAPE[1], SHAPE[0]))
    volumes = {role: Volume(rng.normal(500.0, 80.0, SHAPE).astype(np.float32), geometry)
               for role in (SeriesRole.T1CE, SeriesRole.FLAIR)}
    written = write_study(volumes, tmp_path_factory.mktemp("study"), patient=PatientInfo(patient_id="NF-PACS-1"),
                          seed="pacs-objects")
    return {role: [pydicom.dcmread(p) for p in written.series[role].paths] for role in volumes}


@pytest.fixture(scope="module")
def labels(study: dict[SeriesRole, list[Dataset]]) -> Volume:
    """A tumour on the T1CE grid: oedema around a necrotic core with an enhancing rim."""
    image = series_to_volume(study[SeriesRole.T1CE], study_key="k")
    array = np.zeros(image.array.shape, dtype=np.uint8)
    array[4:11, 20:50, 40:80] = BratsLabel.OEDEMA  # right of the legend, below the banner
    array[5:10, 26:44, 48:72] = BratsLabel.ENHANCING
    array[6:9, 31:39, 56:64] = BratsLabel.NECROTIC_CORE
    return image.with_array(array)


def _report(study: dict[SeriesRole, list[Dataset]], labels: Volume, **update: object) -> StudyReport:
    report = StudyReport(
        study_instance_uid=str(study[SeriesRole.T1CE][0].StudyInstanceUID), study_key="study-key", pipeline="glioma",
        status=ReportStatus.SUCCEEDED, volumes_ml=TumourVolumes.from_label_map(labels), model=MODEL,
        review=ReviewAssessment(needs_review=True, risk_score=2, threshold=1, method="flip ensemble",
                                alarms=["flipped prediction disagrees (WT Dice 0.61)", "FLAIR estimate 2.1x WT"]))
    return report.model_copy(update=update)


@pytest.fixture(scope="module")
def objects(study: dict[SeriesRole, list[Dataset]], labels: Volume) -> dict[str, list[Dataset]]:
    return glioma_objects(_report(study, labels), labels, study, input_hash=HASH, objects=SITE, study_key="k")


def _numeric(sr: Dataset) -> dict[str, list[tuple[str, float, str]]]:
    """Each measurement group's tracking identifier -> (concept code, value, unit code) of its numbers."""
    groups: dict[str, list[tuple[str, float, str]]] = {}

    def walk(items: list[Dataset], group: str) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else ""
            if name == "112039":  # Tracking Identifier
                group = str(item.TextValue)
            if item.get("ValueType") == "NUM":
                value = item.MeasuredValueSequence[0]
                groups.setdefault(group, []).append(
                    (name, float(value.NumericValue), value.MeasurementUnitsCodeSequence[0].CodeValue))
            walk(list(item.get("ContentSequence", [])), group)

    walk([sr], "")
    return groups


def test_glioma_objects_are_seg_sr_and_two_overlays_each_dciodvfy_clean(
        objects: dict[str, list[Dataset]], tmp_path: Path) -> None:
    assert set(objects) == {SEG_FILE, SR_FILE, T1CE_OVERLAY_FOLDER, FLAIR_OVERLAY_FOLDER}
    for name in (SEG_FILE, SR_FILE):
        assert _dciodvfy_errors(objects[name][0], tmp_path) == [], name
    for folder in (T1CE_OVERLAY_FOLDER, FLAIR_OVERLAY_FOLDER):
        assert _dciodvfy_errors(objects[folder][SHAPE[0] // 2], tmp_path) == [], folder


def test_sr_says_what_the_report_says(objects: dict[str, list[Dataset]], study: dict[SeriesRole, list[Dataset]],
                                      labels: Volume) -> None:
    sr = objects[SR_FILE][0]
    report = _report(study, labels)
    assert report.volumes_ml is not None
    volumes = report.volumes_ml.model_dump()
    numbers = _numeric(sr)
    for region, label in (("WT", "Whole tumour (WT)"), ("TC", "Tumour core (TC)"), ("ET", "Enhancing tumour (ET)"),
                          ("oedema", "Oedema (WT - TC)"), ("necrotic_core", "Necrotic core (TC - ET)")):
        (name, value, unit), = numbers[label]
        assert (name, unit) == ("118565006", "mL")  # SNOMED Volume, in mL
        assert value == pytest.approx(volumes[region], abs=0.01) and value > 0
    assert numbers["Review assessment"] == [("RISK-SCORE", 2.0, "1"), ("REVIEW-THRESHOLD", 1.0, "1")]
    texts = sr_texts(sr)
    assert SR_DISCLAIMER in texts
    assert "Alarm: flipped prediction disagrees (WT Dice 0.61)" in texts
    assert any(t.startswith("Method: automatic 3D segmentation by glioma_unet version 2") for t in texts)
    assert sr.SeriesDescription.startswith("NEEDS REVIEW")
    assert sr.SeriesNumber == SITE.sr_series_number
    # highdicom reads it back as a TID 1500 report; the disjoint regions reference their SEG segment.
    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    volumetric = parsed.content.get_volumetric_roi_measurement_groups()
    seg = objects[SEG_FILE][0]
    assert len(volumetric) == 3
    numbers_referenced = set()
    for group in volumetric:
        segment = group.referenced_segment
        assert segment is not None
        assert segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        numbers_referenced.update(int(n) for n in segment.referenced_segment_numbers)
    assert numbers_referenced == {1, 2, 3}
    assert notice_of(report) is None  # a result to show: no notice


def test_sr_codes_each_region_once_and_the_seg_codes_each_segment_once(objects: dict[str, list[Dataset]]) -> None:
    assert len({code[0] for code in REGION_CODES.values()}) == len(REGION_CODES)
    seg = objects[SEG_FILE][0]
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence]
    assert len(types) == len(set(types)) == len(GLIOMA_SEGMENTS)
    assert seg.SeriesDescription.startswith("NEEDS REVIEW")
    assert seg.SeriesNumber == SITE.seg_series_number


def test_every_uid_made_lies_under_the_site_root(objects: dict[str, list[Dataset]],
                                                 study: dict[SeriesRole, list[Dataset]]) -> None:
    theirs = {str(v) for instances in study.values() for ds in instances
              for v in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID)}

    def uids(ds: Dataset) -> list[tuple[str, str]]:
        found = []
        for element in ds:
            if element.VR == "SQ":
                found += [pair for item in element.value for pair in uids(item)]
            elif element.VR == "UI" and element.value:
                found.append((element.keyword, str(element.value)))
        return found

    for name, datasets in objects.items():
        for ds in datasets[:2]:
            made = [(keyword, uid) for keyword, uid in uids(ds)
                    if uid not in theirs and not uid.startswith("1.2.840.10008.")]  # DICOM's own: SOP classes
            assert made and all(uid.startswith(SITE.uid_root) for _, uid in made), (name, made)
    assert derived_uid(SITE.uid_root, "x") == derived_uid(SITE.uid_root, "x") != derived_uid(SITE.uid_root, "y")
    with pytest.raises(ValidationError):
        ResultObjectSettings(uid_root="1.2.abc.")


def test_overlays_lie_on_their_source_slices_with_legend_and_banner_burned_in(
        objects: dict[str, list[Dataset]], study: dict[SeriesRole, list[Dataset]]) -> None:
    for folder, role, number in ((T1CE_OVERLAY_FOLDER, SeriesRole.T1CE, SITE.t1ce_overlay_series_number),
                                 (FLAIR_OVERLAY_FOLDER, SeriesRole.FLAIR, SITE.flair_overlay_series_number)):
        overlay = objects[folder]
        by_uid = {str(ds.SOPInstanceUID): ds for ds in study[role]}
        assert len(overlay) == SHAPE[0]
        for ds in overlay:
            source = by_uid[str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)]
            assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
            assert [float(v) for v in ds.ImagePositionPatient] == [float(v) for v in source.ImagePositionPatient]
            assert ds.BurnedInAnnotation == "YES" and ds.SeriesNumber == number
        pixels = overlay[0].pixel_array  # slice 0 holds no tumour: only the burned-in text is coloured
        rows = pixels.shape[0]
        banner = pixels[: _flag_band_rows(pixels)[0]]  # above the flag band (the result is flagged)
        assert (banner > 150).all(axis=-1).sum() > 20, "banner text missing"
        legend = pixels[rows // 2:]
        for segment in GLIOMA_SEGMENTS:
            swatch = (legend == np.asarray(segment.rgb, dtype=np.uint8)).all(axis=-1).sum()
            assert swatch >= 9, f"legend swatch of {segment.label} missing"
    assert {s.rgb for s in GLIOMA_SEGMENTS} <= set(OKABE_ITO.values())


def test_tumour_pixels_carry_their_palette_colour(objects: dict[str, list[Dataset]], labels: Volume) -> None:
    pixels = np.stack([ds.pixel_array for ds in objects[T1CE_OVERLAY_FOLDER]]).astype(int)
    # Below the burned-in banner and flag band (this small image's tumour reaches up under the flag band).
    below = np.arange(pixels.shape[1])[None, :, None] > _flag_band_rows(pixels[0].astype(np.uint8))[-1]
    enhancing, oedema = (labels.array == BratsLabel.ENHANCING) & below, (labels.array == BratsLabel.OEDEMA) & below
    red, blue = pixels[..., 0], pixels[..., 2]
    assert (red[enhancing] > blue[enhancing] + 40).all()  # vermillion
    assert (blue[oedema] > red[oedema] + 20).all()  # sky blue


def _flag_band_rows(pixels: np.ndarray) -> np.ndarray:
    """The rows of an overlay image that are orange from edge to edge (the flag band's margins)."""
    return np.flatnonzero((pixels == np.asarray(FLAG_BAND_RGB, dtype=np.uint8)).all(axis=-1).all(axis=1))


def test_a_flagged_result_has_needs_review_burned_into_every_overlay_image(
        objects: dict[str, list[Dataset]], study: dict[SeriesRole, list[Dataset]], labels: Volume,
        tmp_path: Path) -> None:
    passed = ReviewAssessment(needs_review=False, risk_score=0, threshold=1, method="flip ensemble")
    plain = glioma_objects(_report(study, labels, review=passed), labels, study, input_hash=HASH, objects=SITE,
                           study_key="k")
    for folder in (T1CE_OVERLAY_FOLDER, FLAIR_OVERLAY_FOLDER):
        assert len(objects[folder]) == len(plain[folder]) == SHAPE[0]
        for flagged_ds, plain_ds in zip(objects[folder], plain[folder], strict=True):
            flagged_ds.save_as(tmp_path / "flagged.dcm", enforce_file_format=True)
            plain_ds.save_as(tmp_path / "plain.dcm", enforce_file_format=True)
            flagged = pydicom.dcmread(tmp_path / "flagged.dcm").pixel_array
            unflagged = pydicom.dcmread(tmp_path / "plain.dcm").pixel_array
            rows = _flag_band_rows(flagged)
            # An orange band across the whole width, right below the banner, with the flag's black letters.
            assert len(rows) >= 2 and 0 < rows[0] < flagged.shape[0] // 4, rows
            band = flagged[rows[0]:rows[-1] + 1]
            letters = (band < 100).all(axis=-1)  # dark, anti-aliased against the orange
            assert letters.sum() >= 30 and letters.any(axis=0).sum() >= 20  # text, spread along the band
            assert (letters | (band == np.asarray(FLAG_BAND_RGB)).all(axis=-1)).mean() > 0.7
            # Not flagged: no orange pixel anywhere, and the pixels below the band are the flagged image's.
            assert not (unflagged == np.asarray(FLAG_BAND_RGB, dtype=np.uint8)).all(axis=-1).any()
            assert (unflagged[rows[-1] + 1:] == flagged[rows[-1] + 1:]).all()
        assert str(objects[folder][0].SeriesDescription).startswith("NEEDS REVIEW ")
        assert not str(plain[folder][0].SeriesDescription).startswith("NEEDS REVIEW")


def test_nothing_found_gives_an_sr_with_zero_volumes_and_a_notice(
        study: dict[SeriesRole, list[Dataset]], labels: Volume, tmp_path: Path) -> None:
    empty = labels.with_array(np.zeros(labels.array.shape, dtype=np.uint8))
    report = _report(study, empty, review=None)
    made = glioma_objects(report, empty, study, input_hash=HASH, objects=SITE, study_key="k")
    assert SEG_FILE not in made and {SR_FILE, NOTICE_SR_FILE, NOTICE_IMAGE_FILE} <= set(made)
    assert NOTHING_FOUND_HEADLINE in sr_texts(made[NOTICE_SR_FILE][0])
    for name in (SR_FILE, NOTICE_SR_FILE, NOTICE_IMAGE_FILE):
        assert _dciodvfy_errors(made[name][0], tmp_path) == [], name


def test_failed_study_gives_a_notice_sr_and_image_saying_why_without_uids(
        study: dict[SeriesRole, list[Dataset]], tmp_path: Path) -> None:
    uid = str(study[SeriesRole.T1CE][0].SeriesInstanceUID)
    failed = StudyReport(study_instance_uid=str(study[SeriesRole.T1CE][0].StudyInstanceUID), study_key="k",
                         pipeline="glioma", status=ReportStatus.FAILED,
                         errors=[f"convert: series {uid} has a missing slice"])
    notice = notice_of(failed)
    assert notice is not None and notice.headline == FAILED_HEADLINE
    made = notice_objects(failed, notice, study[SeriesRole.T1CE][:1], input_hash=failure_hash(failed), objects=SITE)
    sr, image = made[NOTICE_SR_FILE][0], made[NOTICE_IMAGE_FILE][0]
    texts = sr_texts(sr)
    assert FAILED_HEADLINE in texts and "convert: series <UID> has a missing slice" in texts
    assert not any(uid in t for t in texts)
    assert image.BurnedInAnnotation == "YES" and image.StudyInstanceUID == study[SeriesRole.T1CE][0].StudyInstanceUID
    assert (image.pixel_array > 200).any(axis=-1).sum() > 500  # words a plain viewer shows
    for ds in (sr, image):
        assert _dciodvfy_errors(ds, tmp_path) == []


def test_ms_change_sr_counts_the_new_lesions_with_their_volumes(
        study: dict[SeriesRole, list[Dataset]], tmp_path: Path) -> None:
    flair = study[SeriesRole.FLAIR]
    section = LongitudinalReport(
        baseline_study_instance_uid="1.2.3", followup_study_instance_uid=str(flair[0].StudyInstanceUID),
        baseline_study_date="20230101", followup_study_date="20240101", pipelines=["ms_change"],
        new_lesions=[NewLesionEntry(centroid_mm=(10.0, -5.0, 20.0), volume_mm3=54.0, location="frontal WM"),
                     NewLesionEntry(centroid_mm=(-12.0, 3.0, 8.0), volume_mm3=31.5, location="periventricular",
                                    kind="enlarging")],
        new_lesion_count=2, new_activity=True, rejected_candidates=1)
    report = StudyReport(study_instance_uid=str(flair[0].StudyInstanceUID), study_key="k", pipeline="ms_change",
                         status=ReportStatus.SUCCEEDED, model=ModelRef(name="ms_subtraction", version=1),
                         longitudinal=section)
    sr = ms_change_sr(report, flair, input_hash=HASH, objects=SITE)
    numbers = _numeric(sr)
    assert numbers["New MS activity"] == [("NEW-LESION-COUNT", 2.0, "1")]
    assert numbers["Lesion 1 (new)"] == [("118565006", 54.0, "mm3")]
    assert numbers["Lesion 2 (enlarging)"] == [("118565006", 31.5, "mm3")]
    assert any("periventricular" in t for t in sr_texts(sr))
    assert not any("Sensitivity limited" in t for t in sr_texts(sr))
    assert _dciodvfy_errors(sr, tmp_path) == []


def test_ms_change_sr_of_a_pair_too_noisy_for_faint_lesions_says_none_found_is_not_none_there(
        study: dict[SeriesRole, list[Dataset]], tmp_path: Path) -> None:
    # Issue 18: "New MS activity: No" from a pair that cannot show faint lesions is qualified where it is read.
    flair = study[SeriesRole.FLAIR]
    section = LongitudinalReport(
        baseline_study_instance_uid="1.2.3", followup_study_instance_uid=str(flair[0].StudyInstanceUID),
        pipelines=["ms_change"], new_lesions=[], new_lesion_count=0, new_activity=False, rejected_candidates=0,
        ms_detectable_change=2.24, ms_sensitivity_limited=True)
    warning = "ms_change: limited sensitivity: compare the scans"
    report = StudyReport(study_instance_uid=str(flair[0].StudyInstanceUID), study_key="k", pipeline="ms_change",
                         status=ReportStatus.SUCCEEDED, model=ModelRef(name="ms_subtraction", version=1),
                         longitudinal=section, warnings=[warning])
    sr = ms_change_sr(report, flair, input_hash=HASH, objects=SITE)
    texts = sr_texts(sr)
    assert any(t.startswith("Sensitivity limited") and "2.24" in t for t in texts), texts
    assert f"Warning: {warning}" in texts
    summary = render_summary(report)
    assert "MS new activity: no (0 new/enlarging lesion(s))" in summary
    assert "SENSITIVITY LIMITED: this pair shows only changes above 2.24" in summary
    assert _dciodvfy_errors(sr, tmp_path) == []


def test_rerun_on_other_inputs_is_the_next_version_naming_the_earlier_sr(
        objects: dict[str, list[Dataset]], study: dict[SeriesRole, list[Dataset]], labels: Volume,
        tmp_path: Path) -> None:
    first_sr = objects[SR_FILE][0]
    study_uid = str(first_sr.StudyInstanceUID)
    same = earlier_result(first_sr, study_instance_uid=study_uid, input_hash=HASH, objects=SITE)
    assert same == Supersedes(first_sr, 1, True)
    other_hash = "b" * 64  # a new model version: another input hash
    earlier = earlier_result(first_sr, study_instance_uid=study_uid, input_hash=other_hash, objects=SITE)
    assert earlier is not None and not earlier.same_input
    second = glioma_objects(_report(study, labels), labels, study, input_hash=other_hash, objects=SITE,
                            study_key="k", earlier=earlier)
    sr2 = second[SR_FILE][0]
    assert sr2.SOPInstanceUID != first_sr.SOPInstanceUID
    assert sr2.SeriesDescription.endswith(" v2") and second[SEG_FILE][0].SeriesDescription.endswith(" v2")
    predecessor = sr2.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == first_sr.SOPInstanceUID
    assert _dciodvfy_errors(sr2, tmp_path) == []
    # The same inputs again: rebuilt in place (same UID), still version 2, still naming version 1.
    again = earlier_result(sr2, study_instance_uid=study_uid, input_hash=other_hash, objects=SITE)
    assert again is not None and again.same_input and again.version == 2
    third = glioma_objects(_report(study, labels), labels, study, input_hash=other_hash, objects=SITE,
                           study_key="k", earlier=again)[SR_FILE][0]
    assert third.SOPInstanceUID == sr2.SOPInstanceUID and third.SeriesDescription == sr2.SeriesDescription
    assert "PredecessorDocumentsSequence" in third


def test_banner_text_is_the_not_for_diagnosis_banner() -> None:
    assert "NOT FOR DIAGNOSIS" in BANNER
