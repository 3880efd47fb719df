"""Lesion-wise follow-up of brain metastases (issue 15, RANO-BM): lesions matched across a known patient shift
through the registration's transform, each one new, growing, stable, shrinking or resolved, the target lesions'
sum of longest diameters and the RANO-BM category, on label volumes built here with known truth."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.lesions import Lesions, label_lesions
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, write_series
from neuroflow.devtools.scanner_presets import PRESETS, Vendor
from neuroflow.devtools.synthetic_metastases import colin27_background
from neuroflow.longitudinal.compare import register_prior
from neuroflow.longitudinal.metastases_response import (
    CAVEATS,
    lesion_status,
    match_lesions,
    metastases_response,
    prior_on_followup,
    rano_bm,
    target_lesions,
)
from neuroflow.preprocess.glioma_inputs import PreprocessedStudy
from neuroflow.preprocess.normalise import zscore_in_mask
from neuroflow.results.dicom_sr import metastases_response_sr, sr_texts
from neuroflow.results.metastases_results import provisional_review
from neuroflow.results.report import (
    LesionFollowUpEntry,
    LesionStatus,
    LongitudinalReport,
    RanoBmCategory,
    ReportStatus,
    StudyReport,
)

# A 1 mm grid in LPS; the follow-up's grid is the same box, the patient moved by SHIFT_MM inside it.
GRID = Geometry((1.0, 1.0, 1.0), (-60.0, -60.0, -30.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (120, 120, 60))
SHIFT_MM = np.array([18.0, -10.0, 6.0])  # 21 mm: no lesion would overlap or lie close enough without registration


def _spheres(centres_diameters: list[tuple[tuple[float, float, float], float]], shift: np.ndarray | None = None
             ) -> Lesions:
    k, j, i = np.indices(GRID.size[::-1], dtype=np.float64)
    x, y, z = (GRID.origin[0] + i, GRID.origin[1] + j, GRID.origin[2] + k)
    mask = np.zeros(k.shape, dtype=np.uint8)
    for centre, diameter in centres_diameters:
        c = np.asarray(centre) + (shift if shift is not None else 0.0)
        mask[(x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= (diameter / 2.0) ** 2] = 1
    return label_lesions(Volume(mask, GRID))


# Prior: A 12 mm (grows to 20), B 16 mm (shrinks to 8), C 6 mm (resolves), E 10 mm (stable, 11);
# follow-up adds D, 12 mm, new. Centres (LPS mm) at least 25 mm apart.
A, B, C, D, E = (-30.0, -20.0, 0.0), (25.0, -25.0, 5.0), (0.0, 25.0, -5.0), (-25.0, 30.0, 10.0), (30.0, 20.0, -8.0)
PRIOR = [(A, 12.0), (B, 16.0), (C, 6.0), (E, 10.0)]
FOLLOW_UP = [(A, 20.0), (B, 8.0), (D, 12.0), (E, 11.0)]


def _to_prior(shift: np.ndarray) -> sitk.Transform:
    """Follow-up points to prior points, as register_rigid(fixed=follow-up, moving=prior) returns them."""
    transform = sitk.Euler3DTransform()
    transform.SetTranslation(tuple(float(v) for v in -shift))
    return transform


@pytest.fixture(scope="module")
def pair() -> tuple[Lesions, Lesions]:
    return _spheres(PRIOR), _spheres(FOLLOW_UP, SHIFT_MM)


def _by_status(entries: list[LesionFollowUpEntry]) -> dict[LesionStatus, list[LesionFollowUpEntry]]:
    out: dict[LesionStatus, list[LesionFollowUpEntry]] = {}
    for entry in entries:
        out.setdefault(entry.status, []).append(entry)
    return out


def _nearest(entries: list[LesionFollowUpEntry], point: tuple[float, float, float]) -> LesionFollowUpEntry:
    return min(entries, key=lambda e: float(np.linalg.norm(np.subtract(e.centroid_mm, point))))


def test_a_growing_a_shrinking_a_stable_a_new_and_a_resolved_lesion_are_told_apart_across_a_patient_shift(
        pair: tuple[Lesions, Lesions]) -> None:
    prior, current = pair
    response = metastases_response(prior, current, prior_on_followup(prior, GRID, _to_prior(SHIFT_MM)))
    where = {name: tuple(np.add(point, SHIFT_MM)) for name, point in (("A", A), ("B", B), ("C", C), ("D", D),
                                                                       ("E", E))}
    expected = {"A": LesionStatus.GROWING, "B": LesionStatus.SHRINKING, "C": LesionStatus.RESOLVED,
                "D": LesionStatus.NEW, "E": LesionStatus.STABLE}
    for name, status in expected.items():
        entry = _nearest(response.lesions, where[name])
        assert entry.status is status, (name, entry)
        # Each lesion's centroid is reported on the follow-up, where it is (a resolved one: registered from the prior).
        assert float(np.linalg.norm(np.subtract(entry.centroid_mm, where[name]))) < 1.0, (name, entry)
    assert response.counts == {"new": 1, "growing": 1, "stable": 1, "shrinking": 1, "resolved": 1}
    grown = _nearest(response.lesions, where["A"])
    assert grown.matched_by == "overlap" and grown.prior_diameter_mm == pytest.approx(12.0, abs=1.0)
    assert grown.diameter_mm == pytest.approx(20.0, abs=1.0) and grown.change_pct is not None
    assert grown.match_distance_mm is not None and grown.match_distance_mm < 1.0
    new = _nearest(response.lesions, where["D"])
    assert new.prior_number is None and new.prior_diameter_mm == 0.0 and new.change_pct is None


def test_without_the_registration_the_same_lesions_would_not_match(pair: tuple[Lesions, Lesions]) -> None:
    # The shift is what the registration takes away: on scanner coordinates alone (identity), no lesion of the
    # prior is found again and every one looks resolved while its follow-up self looks new.
    prior, current = pair
    matches = match_lesions(prior, current, prior_on_followup(prior, GRID, sitk.Euler3DTransform()))
    assert all(m.prior is None or m.current is None for m in matches)
    registered = match_lesions(prior, current, prior_on_followup(prior, GRID, _to_prior(SHIFT_MM)))
    assert sum(m.prior is not None and m.current is not None for m in registered) == 3  # A, B, E


def test_a_lesion_that_shrank_away_from_its_outline_still_matches_by_distance() -> None:
    # After radiosurgery a lesion may shrink eccentrically: no voxel shared, centroid 12.5 mm off, still the same one.
    prior = _spheres([((0.0, 0.0, 0.0), 20.0)])
    current = _spheres([((0.0, 12.5, 0.0), 4.0)])
    [match] = match_lesions(prior, current, prior_on_followup(prior, GRID, sitk.Euler3DTransform()))
    assert (match.prior, match.current, match.by) == (1, 1, "distance")
    # Two small lesions 12 mm apart are not one: 3 mm lesions match within 1.5 + 3 mm only.
    prior, current = _spheres([((0.0, 0.0, 0.0), 3.0)]), _spheres([((0.0, 12.0, 0.0), 3.0)])
    matches = match_lesions(prior, current, prior_on_followup(prior, GRID, sitk.Euler3DTransform()))
    assert {(m.prior, m.current) for m in matches} == {(1, None), (None, 1)}


@pytest.mark.parametrize(("prior_mm", "current_mm", "status"), [
    (10.0, 12.0, LesionStatus.STABLE),      # +20 % but 2 mm: within measurement error
    (10.0, 13.0, LesionStatus.GROWING),     # +30 %, 3 mm
    (40.0, 46.0, LesionStatus.STABLE),      # +15 %: under RANO-BM's 20 %
    (10.0, 7.0, LesionStatus.SHRINKING),    # -30 %, 3 mm
    (5.0, 3.0, LesionStatus.STABLE),        # -40 % but 2 mm
    (None, 4.0, LesionStatus.NEW),
    (6.0, None, LesionStatus.RESOLVED),
])
def test_the_status_of_one_lesion_needs_the_relative_and_the_absolute_change(
        prior_mm: float | None, current_mm: float | None, status: LesionStatus) -> None:
    assert lesion_status(prior_mm, current_mm) is status


def test_targets_are_at_most_five_measurable_lesions_chosen_on_the_prior_largest_first() -> None:
    centres = [((-40.0 + 16.0 * n, 0.0, 0.0), d) for n, d in enumerate((11.0, 9.0, 14.0, 12.0, 10.0, 13.0))]
    prior = _spheres(centres)
    targets = target_lesions(prior)
    diameters = {m.number: m.longest_axial_diameter_mm for m in prior.lesions}
    assert len(targets) == 5 and all(diameters[n] >= 10.0 for n in targets)
    assert [diameters[n] for n in targets] == sorted((diameters[n] for n in targets), reverse=True)
    assert min(diameters[n] for n in diameters if n not in targets) < 10.0  # the 9 mm one is non-target
    # On 6 mm slices a lesion must be 12 mm across to be measurable (twice the slice thickness).
    assert all(diameters[n] >= 12.0 for n in target_lesions(prior, slice_thickness_mm=6.0))


def _row(prior_mm: float, current_mm: float, *, target: bool = True) -> LesionFollowUpEntry:
    status = lesion_status(prior_mm or None, current_mm or None)
    return LesionFollowUpEntry(number=1 if current_mm else None, prior_number=1 if prior_mm else None, status=status,
                               prior_diameter_mm=prior_mm, diameter_mm=current_mm, change_mm=current_mm - prior_mm,
                               change_pct=None, prior_volume_ml=0.0, volume_ml=0.0, centroid_mm=(0.0, 0.0, 0.0),
                               target=target)


@pytest.mark.parametrize(("rows", "category"), [
    ([_row(20.0, 0.0), _row(12.0, 0.0), _row(6.0, 0.0, target=False)], RanoBmCategory.CR),
    ([_row(20.0, 0.0), _row(12.0, 0.0), _row(6.0, 4.0, target=False)], RanoBmCategory.PR),  # a non-target remains
    ([_row(20.0, 13.0), _row(12.0, 9.0)], RanoBmCategory.PR),       # 32 -> 22: -31 %
    ([_row(20.0, 15.0), _row(12.0, 9.0)], RanoBmCategory.SD),       # -25 %
    ([_row(20.0, 26.0), _row(12.0, 13.0)], RanoBmCategory.PD),      # +22 %, one lesion +6 mm
    ([_row(10.0, 14.0), _row(10.0, 14.0)], RanoBmCategory.SD),      # +40 % but no lesion grew by 5 mm
    ([_row(20.0, 20.0), _row(0.0, 11.0, target=False)], RanoBmCategory.PD),  # an unequivocal new lesion
    ([_row(20.0, 12.0), _row(0.0, 4.0, target=False)], RanoBmCategory.SD),   # -40 % but an equivocal new lesion
    ([_row(8.0, 6.0, target=False)], RanoBmCategory.NE),            # no measurable lesion at baseline
    ([_row(8.0, 0.0, target=False)], RanoBmCategory.CR),
])
def test_rano_bm_category_follows_the_sum_of_longest_diameters_and_new_lesions(
        rows: list[LesionFollowUpEntry], category: RanoBmCategory) -> None:
    assessment = rano_bm(rows)
    assert assessment.category is category, assessment.reasons
    assert assessment.caveats == list(CAVEATS) and any("corticosteroid" in c for c in assessment.caveats)


def test_the_sum_of_longest_diameters_is_over_the_targets_and_its_change_is_from_the_prior(
        pair: tuple[Lesions, Lesions]) -> None:
    prior, current = pair
    response = metastases_response(prior, current, prior_on_followup(prior, GRID, _to_prior(SHIFT_MM)))
    targets = [e for e in response.lesions if e.target]
    assert len(targets) == 3  # A 12, B 16, E 10: C (6 mm) is not measurable, D is new
    rano = response.rano_bm
    assert rano.sld_prior_mm == pytest.approx(sum(e.prior_diameter_mm for e in targets), abs=0.2)
    assert rano.sld_mm == pytest.approx(sum(e.diameter_mm for e in targets), abs=0.2)
    assert rano.sld_change_pct == pytest.approx(100 * (rano.sld_mm - rano.sld_prior_mm) / rano.sld_prior_mm, abs=0.2)
    # The 12 mm new lesion is unequivocal: progression whatever the sum does.
    assert rano.category is RanoBmCategory.PD and rano.unequivocal_new == 1


@pytest.mark.skipif(not Path("/usr/share/mricron/templates/ch2.nii.gz").is_file(),
                    reason="Colin27 (Debian mricron-data) is not installed")
def test_the_prior_is_registered_onto_the_follow_up_even_in_another_frame_of_reference() -> None:
    # Two sessions: the patient turned 4 degrees and moved 5 mm, and the scanner's coordinates differ by 40 mm
    # (another frame of reference). register_prior must map follow-up points to where the tissue was at the prior.
    background = colin27_background(axial_slices=(60, 135))
    geometry = background.t1ce.geometry
    centre = geometry.index_to_patient() @ np.array([*(np.asarray(geometry.size) - 1) / 2.0, 1.0])
    motion = sitk.Euler3DTransform()
    motion.SetCenter(tuple(float(v) for v in centre[:3]))
    motion.SetRotation(0.0, 0.0, float(np.radians(4.0)))
    motion.SetTranslation((3.0, -4.0, 0.0))
    offset = np.array([40.0, -25.0, 10.0])
    moved_t1 = resample(background.t1ce, geometry, motion)
    moved_mask = resample(background.brain_mask, geometry, motion, interpolator=sitk.sitkNearestNeighbor)
    elsewhere = Geometry(geometry.spacing, tuple(float(v) for v in np.add(geometry.origin, offset)),  # type: ignore[arg-type]
                         geometry.direction, geometry.size)

    def study(image: Volume, mask: Volume) -> PreprocessedStudy:
        brain = np.asarray(mask.array) > 0
        return PreprocessedStudy(normalised={SeriesRole.T1CE: image.with_array(
                                     zscore_in_mask(np.asarray(image.array, dtype=np.float32), brain))},
                                 brain_mask=mask, reference_geometry=image.geometry, registration={}, flip_checks={})

    prior = study(background.t1ce, background.brain_mask)
    followup = study(Volume(moved_t1.array, elsewhere), Volume(moved_mask.array, elsewhere))
    result = register_prior(prior, followup)
    # Truth: a follow-up point p lies at p - offset in the scanner's first coordinates, then moves with the patient.
    brain_points = np.argwhere(np.asarray(moved_mask.array) > 0)[::4000]
    errors = []
    for k, j, i in brain_points:
        p = elsewhere.index_to_patient() @ np.array([i, j, k, 1.0])
        truth = np.array(motion.TransformPoint(tuple(float(v) for v in p[:3] - offset)))
        errors.append(float(np.linalg.norm(np.subtract(result.transform.TransformPoint(tuple(p[:3])), truth))))
    assert float(np.median(errors)) < 1.0 and max(errors) < 2.0, (np.median(errors), max(errors))


def test_the_sr_reads_back_with_the_category_the_sld_and_a_row_per_lesion_and_is_dciodvfy_clean(
        pair: tuple[Lesions, Lesions], tmp_path: Path) -> None:
    prior, current = pair
    response = metastases_response(prior, current, prior_on_followup(prior, GRID, _to_prior(SHIFT_MM)))
    model = ModelRef(name="metastases_unet", version=1)
    response = response.model_copy(update={"review": provisional_review(model, "test")})
    study = StudyInfo.create("mets-response-sr")
    series = SeriesInfo.create(study, PRESETS[Vendor.SIEMENS][SeriesRole.T1CE], series_number=5)
    small = Geometry((1.0, 1.0, 1.0), GRID.origin, GRID.direction, (32, 32, 4))
    paths = write_series(Volume(np.full((4, 32, 32), 300.0, dtype=np.float32), small), tmp_path / "t1ce",
                         study=study, series=series)
    evidence = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    section = LongitudinalReport(baseline_study_instance_uid="1.2.3.1",
                                 followup_study_instance_uid=study.study_instance_uid,
                                 baseline_study_date="20240105", followup_study_date="20240412",
                                 pipelines=["metastases_response"], metastases_response=response)
    report = StudyReport(study_instance_uid=study.study_instance_uid, study_key="k", pipeline="metastases_response",
                         status=ReportStatus.SUCCEEDED, model=model, longitudinal=section)
    sr = metastases_response_sr(report, evidence, input_hash="h", objects=ResultObjectSettings())
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.SeriesDescription.startswith("NEEDS REVIEW") and back.SeriesNumber == 9125
    texts = sr_texts(back)
    assert f"RANO-BM {response.rano_bm.category.value} from imaging only" in texts
    assert any("corticosteroid" in t for t in texts) and any("provisional model" in t for t in texts)
    rows = [t for t in texts if "mm LPS on the follow-up" in t]
    assert len(rows) == len(response.lesions) == 5
    assert {row.split(": ")[1].split(",")[0] for row in rows} == {s.value for s in LesionStatus}
    numbers = {_code(item): float(item.MeasuredValueSequence[0].NumericValue)
               for item in _items(back) if item.get("ValueType") == "NUM"}
    assert numbers["SLD-PRIOR"] == pytest.approx(response.rano_bm.sld_prior_mm)
    assert numbers["SLD"] == pytest.approx(response.rano_bm.sld_mm)
    dciodvfy = shutil.which("dciodvfy")
    assert dciodvfy is not None, "dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')"
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=120)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert not errors, errors


def _code(item: Dataset) -> str:
    concept = item.ConceptNameCodeSequence[0]  # a value over 16 characters is a LongCodeValue
    return str(concept.get("CodeValue") or concept.get("LongCodeValue"))


def _items(ds: Dataset) -> list[Dataset]:
    found: list[Dataset] = []
    for item in ds.get("ContentSequence", []):
        found += [item, *_items(item)]
    return found
