"""Rigid mutual-information registration recovers a known patient motion between two contrasts, the
common grid keeps the reference's orientation, and the left/right check catches a mirrored series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.preprocess.orientation import check_left_right, coarse_reference
from neuroflow.preprocess.register import WorkingImage, isotropic_grid, register_rigid

CASE = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294"


def _read(name: str) -> Volume:
    return Volume.from_sitk(sitk.ReadImage(str(CASE / name)))


@pytest.fixture(scope="module")
def t1c() -> Volume:
    return _read("t1c_bet.nii.gz")


@pytest.fixture(scope="module")
def flair() -> Volume:
    return _read("fla_bet.nii.gz")


@pytest.mark.parametrize("sequence", ["fla_bet.nii.gz", "t2_bet.nii.gz"])
def test_known_rotation_and_shift_between_t1ce_and_another_contrast_is_recovered(t1c: Volume, sequence: str) -> None:
    """The T2 case: from the scanner's alignment the optimiser finds a false optimum 14 mm off (NMI hardly
    differs); the outlines disagree there, and the second start lands right."""
    image = _read(sequence).to_sitk()
    motion = sitk.Euler3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([120.0, 120.0, 77.0]))
    motion.SetRotation(0.0, 0.05, 0.087)  # about 3 and 5 degrees
    motion.SetTranslation((6.0, -4.0, 3.0))
    moved = Volume.from_sitk(sitk.Resample(image, image, motion, sitk.sitkLinear, 0.0))

    result = register_rigid(t1c, moved)

    # The recovered transform maps reference points where the motion sent them: check on brain points.
    brain = np.argwhere(t1c.array > 0)[:: 5000]
    ref_image = t1c.to_sitk()
    errors = []
    for k, j, i in brain:
        p = ref_image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)])
        truth = motion.GetInverse().TransformPoint(p)
        errors.append(np.linalg.norm(np.subtract(result.transform.TransformPoint(p), truth)))
    assert float(np.median(errors)) < 1.0, f"median target registration error {np.median(errors):.2f} mm"
    assert result.nmi > result.nmi_before


def test_isotropic_grid_keeps_direction_and_field_of_view() -> None:
    oblique = tuple(np.round(sitk.VersorRigid3DTransform((0.1, 0.0, 0.0, 0.995)).GetMatrix(), 12))
    norm = np.asarray(oblique).reshape(3, 3)
    direction = tuple((norm / np.linalg.norm(norm, axis=0)).ravel())
    thick = Geometry(spacing=(0.5, 0.5, 5.0), origin=(10.0, -20.0, 30.0), direction=direction, size=(400, 400, 24))
    grid = isotropic_grid(thick, 1.0)
    assert grid.direction == thick.direction
    assert grid.size == (200, 200, 120)
    # The outer corner of the first voxel stays where it was.
    corner_before = thick.index_to_patient() @ np.array([-0.5, -0.5, -0.5, 1.0])
    corner_after = grid.index_to_patient() @ np.array([-0.5, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(corner_before, corner_after, atol=1e-6)


def test_resampling_onto_own_grid_is_identity(t1c: Volume) -> None:
    same = resample(t1c, t1c.geometry)
    np.testing.assert_allclose(same.array, t1c.array.astype(np.float32), atol=1e-3)


def test_series_with_mirrored_pixel_data_is_called_flipped(t1c: Volume, flair: Volume) -> None:
    mirrored = flair.with_array(flair.array[:, :, ::-1].copy())
    assert check_left_right(t1c, mirrored).flipped
    honest = check_left_right(t1c, flair)
    assert not honest.flipped
    assert honest.verdict == "consistent"


def test_the_reference_made_coarse_once_gives_the_same_check_and_registration(t1c: Volume, flair: Volume) -> None:
    """A study's series are all checked and registered against one reference, which is smoothed and
    downsampled once: the results must be those of doing it for each series."""
    # ITK's threaded metric sums in a varying order: two identical runs differ, by up to ~1e-6 in NMI (the flip
    # margin is 8e-3).
    once, each = check_left_right(t1c, flair, reference_coarse=coarse_reference(t1c)), check_left_right(t1c, flair)
    assert (once.nmi_as_is, once.nmi_mirrored) == pytest.approx((each.nmi_as_is, each.nmi_mirrored), abs=1e-4)
    working = WorkingImage.of(t1c)
    shared, alone = register_rigid(t1c, flair, fixed_working=working), register_rigid(t1c, flair)
    assert shared.transform.GetParameters() == pytest.approx(alone.transform.GetParameters(), abs=1e-4)
    assert (shared.nmi, shared.metric) == pytest.approx((alone.nmi, alone.metric), abs=1e-4)
    with pytest.raises(ValueError, match="another volume or spacing"):
        register_rigid(flair, t1c, fixed_working=working)
    with pytest.raises(ValueError, match="another volume or spacing"):
        register_rigid(t1c, flair, fixed_working=working, working_spacing_mm=3.0)


def test_outline_agreement_tells_an_aligned_series_from_one_left_15_mm_off(t1c: Volume) -> None:
    from neuroflow.core.volume import downsample
    from neuroflow.preprocess.register import outline_agreement

    fixed, moving = downsample(t1c, 2.0), downsample(_read("t2_bet.nii.gz"), 2.0)
    assert outline_agreement(fixed, moving, sitk.Euler3DTransform()) > 0.95
    off = sitk.Euler3DTransform()
    off.SetTranslation((0.0, 15.0, 0.0))
    assert outline_agreement(fixed, moving, off) < 0.9


def test_a_second_start_keeps_the_better_registration_and_says_so(t1c: Volume) -> None:
    """Forced (an outline threshold no registration reaches): the registration starts again from the centres of
    mass and keeps the better result, which still lands where the motion sent the brain."""
    image = _read("t2_bet.nii.gz").to_sitk()
    motion = sitk.Euler3DTransform()
    motion.SetCenter(image.TransformContinuousIndexToPhysicalPoint([120.0, 120.0, 77.0]))
    motion.SetRotation(0.035, 0.0, -0.07)
    motion.SetTranslation((-3.0, 2.0, 1.0))
    moved = Volume.from_sitk(sitk.Resample(image, image, motion, sitk.sitkLinear, 0.0))
    result = register_rigid(t1c, moved, min_outline_agreement=1.01)
    assert result.attempts == 2 and result.outline_dice > 0.95
    brain = np.argwhere(t1c.array > 0)[:: 5000]
    ref_image = t1c.to_sitk()
    errors = [np.linalg.norm(np.subtract(result.transform.TransformPoint(p), motion.GetInverse().TransformPoint(p)))
              for p in (ref_image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in brain)]
    assert float(np.median(errors)) < 1.0


def test_a_series_left_misaligned_is_a_warning_of_the_report() -> None:
    from neuroflow.core.handoff import GeometrySummary, PreprocessSummary, RegistrationSummary
    from neuroflow.results.glioma_results import registration_warnings

    grid = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                    size=(4, 4, 4))
    summary = PreprocessSummary(reference_geometry=GeometrySummary.of(grid), brain_volume_ml=1000.0, registration={
        "T2": RegistrationSummary(metric=-0.15, nmi=1.03, nmi_before=1.02, outline_dice=0.79, attempts=2),
        "FLAIR": RegistrationSummary(metric=-0.2, nmi=1.07, nmi_before=1.03, outline_dice=0.98),
        "T1": RegistrationSummary(metric=-0.2, nmi=1.2, nmi_before=1.1)})  # from a stage before the figure
    (warning,) = registration_warnings(summary)
    assert warning.startswith("T2 is not aligned with the reference series (outline Dice 0.79")
