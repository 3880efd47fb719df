"""A post-operative study's prior tumour placed on its grid (issue 15, seed S001; runtime/prior_bed.py): the prior's
neuroflow glioma SEG read back on the series it is drawn on, that series registered across sessions onto today's
reference series, the tumour resampled onto the brain mask's grid. On TCGA-DU-7294 (real MRI, its expert tumour
label): the follow-up is the same brain in another session (another frame of reference, the head turned and moved),
and the bed must land on the tumour moved with it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.dicom_io import FolderDicomSource, StudyIndex
from neuroflow.core.labels import RESECTION_CAVITY_LABEL, BratsLabel
from neuroflow.core.model_card import ModelRef
from neuroflow.core.prior_seg import seg_tumour_mask
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Volume, resample
from neuroflow.devtools.dicom_writer import PatientInfo, WrittenStudy, load_volume, write_study
from neuroflow.devtools.synthetic_postop import another_session
from neuroflow.preprocess.prior_bed import prior_tumour_bed
from neuroflow.results.dicom_seg import build_glioma_seg
from neuroflow.segmentation.measure import dice

DATA = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294"
MODEL = ModelRef(name="glioma_unet", version=4)
# Two nearest-neighbour resamplings and a registration on a 2 mm working grid (median error under 0.5 mm on known
# motions, preprocess/register.py) of a 24 mL tumour: Dice well above this; a bed 3 mm off falls below it.
DICE_FLOOR = 0.85


@dataclass(frozen=True)
class Sessions:
    prior: WrittenStudy
    studies: dict[str, StudyIndex]
    followup: Volume  # the follow-up's T1CE (the reference series as acquired)
    brain_mask: Volume  # on the follow-up's grid
    tumour_now: np.ndarray  # the prior's tumour where it lies in the follow-up, on its grid


def _sessions(folder: Path, *, seg_on: SeriesRole = SeriesRole.T1CE) -> Sessions:
    volumes = {role: load_volume(DATA / name) for role, name in
               ((SeriesRole.T1CE, "t1c_bet.nii.gz"), (SeriesRole.FLAIR, "fla_bet.nii.gz"))}
    patient = PatientInfo(patient_id="NF-PRIOR-BED")
    prior = write_study(volumes, folder / "prior", patient=patient, seed="prior-bed", study_date="20240105")
    instances = [pydicom.dcmread(p) for p in prior.series[seg_on].paths]
    image = series_to_volume(instances, study_key="k")
    truth = load_volume(DATA / "seg_fusion_mav.nii.gz")
    labels = resample(truth, image.geometry, interpolator=sitk.sitkNearestNeighbor)
    array = np.asarray(labels.array).astype(np.uint8)
    array[array == 1] = BratsLabel.NECROTIC_CORE
    array[array == 2] = BratsLabel.OEDEMA
    # A cavity segment on the prior (a result of an earlier post-operative study) is never taken as tumour.
    array[10:14, 20:24, 20:24] = RESECTION_CAVITY_LABEL
    seg = build_glioma_seg(image.with_array(array), instances, model=MODEL)
    assert seg is not None
    seg.save_as(folder / "prior" / "seg.dcm", enforce_file_format=True)

    followup, to_prior = another_session(image)
    grid = followup.geometry
    brain = followup.with_array((np.asarray(followup.array) > 0).astype(np.uint8))
    tumour = image.with_array(np.isin(array, [1, 2, 3]).astype(np.uint8))
    now = np.asarray(resample(tumour, grid, to_prior, interpolator=sitk.sitkNearestNeighbor).array) > 0
    studies, _ = FolderDicomSource(folder).index()
    return Sessions(prior, studies, followup, brain, now)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> Sessions:
    return _sessions(tmp_path_factory.mktemp("prior-bed"))


def test_the_seg_reads_back_as_the_tumour_it_was_written_from(sessions: Sessions) -> None:
    prior = sessions.studies[sessions.prior.study_instance_uid]
    instances = [pydicom.dcmread(p) for p in sessions.prior.series[SeriesRole.T1CE].paths]
    image = series_to_volume(instances, study_key="k")
    seg = pydicom.dcmread(next(path for item in prior.set_aside for path in item.paths))
    read = seg_tumour_mask(seg, instances, image.geometry, stage="test")
    truth = np.asarray(resample(load_volume(DATA / "seg_fusion_mav.nii.gz"), image.geometry,
                                interpolator=sitk.sitkNearestNeighbor).array) > 0
    truth[10:14, 20:24, 20:24] = False  # the cavity segment is left out
    np.testing.assert_array_equal(read, truth)


def test_the_prior_tumour_lands_where_it_moved_to_in_the_follow_up(sessions: Sessions) -> None:
    bed = prior_tumour_bed(FolderDicomSource(Path()), sessions.studies[sessions.prior.study_instance_uid],
                           sessions.followup, sessions.brain_mask, NeuroflowSettings(), study_key="k")
    assert bed.mask is not None, bed.note
    assert bed.mask.shape == sessions.tumour_now.shape
    assert dice(bed.mask, sessions.tumour_now) >= DICE_FLOOR, bed.note
    assert "placed on this study" in bed.note and "mL" in bed.note


def test_without_the_series_the_seg_is_drawn_on_no_bed_is_placed(tmp_path: Path) -> None:
    sessions = _sessions(tmp_path)
    shutil.rmtree(Path(sessions.prior.series[SeriesRole.T1CE].paths[0]).parent)
    studies, _ = FolderDicomSource(tmp_path).index()
    bed = prior_tumour_bed(FolderDicomSource(tmp_path), studies[sessions.prior.study_instance_uid],
                           sessions.followup, sessions.brain_mask, NeuroflowSettings(), study_key="k")
    assert bed.mask is None and "not in the input" in bed.note


def test_a_prior_without_a_seg_places_no_bed(sessions: Sessions) -> None:
    prior = sessions.studies[sessions.prior.study_instance_uid]
    bare = StudyIndex(prior.study_instance_uid, prior.patient_id, prior.series, [])
    bed = prior_tumour_bed(FolderDicomSource(Path()), bare, sessions.followup, sessions.brain_mask,
                           NeuroflowSettings(), study_key="k")
    assert bed.mask is None and "no neuroflow glioma SEG" in bed.note


def test_a_follow_up_that_is_not_this_brain_places_no_bed(sessions: Sessions) -> None:
    """A registration whose outlines disagree (here the follow-up is another shape altogether) is not used."""
    array = np.zeros(sessions.followup.array.shape, dtype=np.float32)
    array[20:60, 40:200, 60:120] = 300.0  # a box, off to one side
    other = sessions.followup.with_array(array)
    bed = prior_tumour_bed(FolderDicomSource(Path()), sessions.studies[sessions.prior.study_instance_uid],
                           other, other.with_array((array > 0).astype(np.uint8)), NeuroflowSettings(),
                           study_key="k")
    assert bed.mask is None and "did not register" in bed.note
