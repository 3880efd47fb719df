"""The real MS pairs of the Ljubljana longitudinal database run the way a site meets them, and scored
(``scripts/bench_ms_real.py``, ``tests/e2e/test_ms_real_pairs.py``): each visit's FLAIR written as a DICOM
study (realistic tags, the NIfTI geometry kept exactly), the two compared by ``neuroflow run``'s embedded code
path, each reported lesion's follow-up centroid mapped into the common space of the expert change mask and
judged by ``lesion_change_scoring``.

The stored ``*_to_common_space.txt`` transforms map common-space points to the scan (what resampling the
scan onto the common grid needs), so a follow-up point goes to the common space through the inverse."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.dicom_io import FolderDicomSource
from neuroflow.core.inference_triton import build_inference_backend
from neuroflow.core.roles import SeriesRole
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Volume, geometry_of
from neuroflow.devtools.dicom_writer import PatientInfo, load_volume, write_study
from neuroflow.devtools.lesion_change_scoring import Detection, PairScore, reference_lesions, score_pair
from neuroflow.devtools.longitudinal_phantoms import REPOSITORY_ROOT, SHARED_DATA
from neuroflow.longitudinal.ms_lesions import (
    HYPERINTENSE,
    MS_STAGES,
    PreparedPair,
    SubtractionMaps,
    prepare_pair,
    subtraction_maps,
)
from neuroflow.runtime.embedded import run_embedded

ROOT = REPOSITORY_ROOT
# The shared data folder beside the checkout (../shared/data), or beside its parent for a git worktree.
DATA = next((d for d in (SHARED_DATA / "ms-longitudinal-ljubljana",
                         ROOT.parents[1] / "shared" / "data" / "ms-longitudinal-ljubljana") if d.is_dir()),
            SHARED_DATA / "ms-longitudinal-ljubljana")
VISIT_DATES = ("20220314", "20230320")  # made up: the database gives no dates, only the order
# A reference lesion *gains FLAIR hyperintensity* when the share of its voxels above the detector's lesion level
# (HYPERINTENSE, on the detector's own scaled scans) rises by at least this much from baseline to follow-up: most
# of it turns lesion-bright. What FLAIR subtraction can see at all; the rest of the experts' change (tissue
# already lesion-bright at baseline, or never lesion-bright) it cannot.
GAIN_SHARE = 0.5

IntArray = npt.NDArray[np.int_]


@dataclass
class PatientResult:
    name: str
    score: PairScore
    seconds: float
    reported: int
    warnings: list[str]
    detectable_change: float  # the pair's faintest detectable change (MsLesionChange.detectable_change)
    sensitivity_limited: bool  # ... above the faintest lesion's: the reader was warned
    gaining: set[int] = field(default_factory=set)  # reference labels that gain FLAIR hyperintensity, when asked

    @property
    def gaining_found(self) -> int:
        return len(self.gaining & self.score.found.keys())


def patients(data: Path) -> list[Path]:
    return sorted(p for p in data.glob("patient*") if (p / "gt.nii.gz").is_file())


def visit_flair(folder: Path, visit: str) -> Volume:
    """The visit's FLAIR as stored (scanner space), in float32."""
    flair = load_volume(folder / f"{visit}_FLAIR.nii.gz")
    return flair.with_array(np.asarray(flair.array, dtype=np.float32))


def on_common_grid(folder: Path, visit: str, common: sitk.Image) -> Volume:
    """The visit's FLAIR resampled onto the common grid with its own transform (linear)."""
    image = sitk.ReadImage(str(folder / f"{visit}_FLAIR.nii.gz"), sitk.sitkFloat32)
    transform = sitk.ReadTransform(str(folder / f"{visit}_FLAIR_to_common_space.txt"))
    resampled = sitk.Resample(image, common, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(resampled), geometry_of(resampled))


def to_common(folder: Path, visit: str) -> sitk.Transform:
    """Scanner (LPS) points of the visit's FLAIR to the common space: the inverse of the stored transform."""
    transform: sitk.Transform = sitk.ReadTransform(str(folder / f"{visit}_FLAIR_to_common_space.txt")).GetInverse()
    return transform


def run_patient(folder: Path, settings: NeuroflowSettings, work: Path) -> PatientResult:
    """Write the two visits as DICOM, run the embedded pipeline on them and score the result."""
    patient = PatientInfo(patient_id=f"NF-MSREAL-{folder.name[-2:]}", name="BENCH^MSREAL")
    studies = work / folder.name / "in"
    for visit, date in zip(("study1", "study2"), VISIT_DATES, strict=True):
        write_study({SeriesRole.FLAIR: visit_flair(folder, visit)},
                    studies / date, patient=patient, seed=f"msreal-{folder.name}-{visit}", study_date=date,
                    description="MRI BRAIN MS FOLLOW-UP")
    backend = build_inference_backend(settings)
    t0 = time.perf_counter()
    report = run_embedded(FolderDicomSource(studies, limits=settings.limits), work / folder.name / "out", settings,
                          backend)
    seconds = time.perf_counter() - t0
    if report.errors or report.longitudinal is None or report.longitudinal.new_lesions is None:
        raise RuntimeError(f"{folder.name}: the run did not compare the pair: {report.errors or report.warnings}")
    mapping = to_common(folder, "study2")
    detections = [Detection(mapping.TransformPoint(lesion.centroid_mm), lesion.volume_mm3)
                  for lesion in report.longitudinal.new_lesions]
    return PatientResult(folder.name, score_patient(folder, detections), seconds, len(detections),
                         list(report.warnings), report.longitudinal.ms_detectable_change or 0.0,
                         bool(report.longitudinal.ms_sensitivity_limited))


def prepared_pair(folder: Path, settings: NeuroflowSettings) -> PreparedPair:
    """The patient's two FLAIRs as the MS detector prepares them (skull strip, registration, N4, matching)."""
    return prepare_pair(visit_flair(folder, "study1"), visit_flair(folder, "study2"),
                        build_inference_backend(settings), settings.models, study_key=f"probe-{folder.name}",
                        clock=StageClock(MS_STAGES))


def reference_voxels(folder: Path, pair: PreparedPair) -> dict[int, IntArray]:
    """Each new or enlarging reference lesion's voxels as (k, j, i) indices of the follow-up's grid, by its
    label in the change mask (the labels of ``PairScore.found``)."""
    common = sitk.ReadImage(str(folder / "gt.nii.gz"))
    change = Volume(sitk.GetArrayFromImage(common), geometry_of(common))
    growing, _ = reference_lesions(change, on_common_grid(folder, "study1", common),
                                   on_common_grid(folder, "study2", common))
    # The stored transform maps common-space points to the follow-up scan.
    to_scan = sitk.ReadTransform(str(folder / "study2_FLAIR_to_common_space.txt"))
    to_index = np.linalg.inv(pair.geometry.index_to_patient())
    upper = np.array(pair.followup.shape) - 1
    out: dict[int, IntArray] = {}
    for lesion in growing:
        scan = np.array([to_scan.TransformPoint(tuple(float(c) for c in p)) for p in lesion.points_mm])
        ijk = (to_index @ np.c_[scan, np.ones(len(scan))].T)[:3].T
        out[lesion.label] = np.clip(np.round(ijk[:, ::-1]).astype(int), 0, upper)
    return out


def hyperintense_shares(maps: SubtractionMaps, voxels: IntArray) -> tuple[float, float]:
    """The share of ``voxels`` above the detector's lesion level at (baseline, follow-up)."""
    where = tuple(voxels.T)
    return float((maps.base_s[where] > HYPERINTENSE).mean()), float((maps.follow_s[where] > HYPERINTENSE).mean())


def gaining_hyperintensity(folder: Path, settings: NeuroflowSettings) -> set[int]:
    """The labels of the reference lesions that gain FLAIR hyperintensity (``GAIN_SHARE``)."""
    pair = prepared_pair(folder, settings)
    maps = subtraction_maps(pair)
    gaining: set[int] = set()
    for label, voxels in reference_voxels(folder, pair).items():
        before, after = hyperintense_shares(maps, voxels)
        if after - before >= GAIN_SHARE:
            gaining.add(label)
    return gaining


def score_patient(folder: Path, detections: list[Detection]) -> PairScore:
    common = sitk.ReadImage(str(folder / "gt.nii.gz"))
    change = Volume(sitk.GetArrayFromImage(common), geometry_of(common))
    growing, shrinking = reference_lesions(change, on_common_grid(folder, "study1", common),
                                           on_common_grid(folder, "study2", common))
    return score_pair(growing, shrinking, detections)


