"""One change pipeline on one pair of timepoints: the seam both runtimes call.

``compare_pair`` takes the two timepoints' DICOM instances by role, converts them to volumes with their
geometry, runs the change algorithm, and returns the report section and the DICOM objects to store. The
embedded runtime writes those to a folder; the distributed longitudinal worker stores them in Orthanc.
Neither re-implements the algorithms or the result objects.

The longitudinal stage is a composite one: it converts DICOM (preprocess), runs the change algorithms
(here) and builds result objects (results) in one step, because a pair is compared as a whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.errors import MissingSequence
from neuroflow.core.identity import input_hash
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.lesions import Lesions, lesions_on
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import CHANGE_REQUIRED_ROLES, GLIOMA_INPUT_ROLES, ChangePipeline, SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.volume_members import volume_instances
from neuroflow.longitudinal.haematoma import (
    HAEMATOMA_STAGES,
    HaematomaChange,
    HaematomaMeasure,
    measure_haematoma_change,
)
from neuroflow.longitudinal.metastases_response import metastases_response, prior_on_followup
from neuroflow.longitudinal.ms_lesions import MS_STAGES, MsLesionChange, detect_new_ms_lesions
from neuroflow.longitudinal.pairing import roles_for
from neuroflow.longitudinal.tumour_growth import GliomaTimepoint, tumour_growth
from neuroflow.preprocess.glioma_inputs import PreprocessedStudy, preprocess_glioma
from neuroflow.preprocess.register import RegistrationResult, register_sessions
from neuroflow.results.dicom_sr import metastases_response_sr, ms_change_sr
from neuroflow.results.longitudinal_results import (
    HAEMATOMA_BASELINE_SEG_FILE,
    HAEMATOMA_FOLLOWUP_SEG_FILE,
    HAEMATOMA_HU,
    METASTASES_RESPONSE_SR_FILE,
    MS_OVERLAY_FOLDER,
    MS_SEG_FILE,
    MS_SR_FILE,
    MS_SUBTRACTION,
    change_overlay,
    haematoma_seg,
    ms_lesion_seg,
)
from neuroflow.results.metastases_results import provisional_review
from neuroflow.results.report import (
    DiametersMm,
    HaematomaSection,
    LesionStatus,
    LongitudinalReport,
    NewLesionEntry,
    ReportStatus,
    StudyReport,
    TumourVolumes,
)
from neuroflow.segmentation.glioma import label_map, predict_regions
from neuroflow.segmentation.metastases import predict_metastases

__all__ = ["COMPARE_STAGES", "ChangePipeline", "PairResult", "Timepoint", "compare_pair"]

# The stages of measuring the glioma volumes of one timepoint (preprocess_glioma's, then the model's).
GLIOMA_MEASURE_STAGES = ("convert", "orientation", "register", "skull_strip", "normalise", "segment", "postprocess")
# Every stage compare_pair may time: a caller's StageClock must know them all.
COMPARE_STAGES: tuple[str, ...] = tuple(dict.fromkeys((
    "convert_pair", *MS_STAGES, *HAEMATOMA_STAGES, *GLIOMA_MEASURE_STAGES, "register_pair", "match_lesions",
    "change_results")))
STAGE = "longitudinal"
# Below this normalised mutual information two skull-stripped T1CE of one brain are not aligned (well aligned
# brain MR reach about 1.1-1.3: preprocess.register); the matches are then suspect.
MIN_PAIR_NMI = 1.05


@dataclass
class Timepoint:
    """One study of the pair: when it was acquired and the instances (with pixels) of the series it uses."""

    study_instance_uid: str
    study_date: str
    study_time: str
    instances: dict[SeriesRole, list[Dataset]] = field(default_factory=dict)
    # Per role, the volume used of a series that holds several (SeriesInstances.volume); absent: the series.
    volumes: dict[SeriesRole, str] = field(default_factory=dict)


@dataclass
class PairResult:
    section: LongitudinalReport  # goes into report.json["longitudinal"]
    # file or series name -> DICOM objects to store: one object per SEG file, one per slice for an overlay series
    datasets: dict[str, list[Dataset]]
    warnings: list[str]


def compare_pair(
    pipeline: ChangePipeline,
    baseline: Timepoint,
    followup: Timepoint,
    backend: InferenceBackend,
    settings: NeuroflowSettings,
    *,
    study_key: str,
    clock: StageClock | None = None,
) -> PairResult:
    """Runs ``pipeline`` on (``baseline``, ``followup``).

    MS new lesions: the FLAIR (T1/T2 when present) of both; returns the new lesions, a SEG of them on the
    follow-up FLAIR (none when there is no new lesion) and the colour overlay series on the follow-up FLAIR.
    Haematoma expansion: the CT of both; returns the volumes and their change and a SEG per timepoint.
    Metastases response: the metastases pipeline's segmentation on the T1CE (and FLAIR) of each, the prior
    registered onto the follow-up, lesions matched and classified with the RANO-BM category
    (``longitudinal.metastases_response``); returns the section and the SR.

    Refuses: MissingSequence when a timepoint lacks a role the pipeline needs; StudyError (naming
    ``study_key``) from conversion or the algorithm (e.g. a 2D FLAIR with slices of 5 mm or more);
    Tumour growth: the glioma inputs of both; runs the glioma segmentation on each and returns the growth
    section over the pair (more timepoints: :func:`measure_glioma_volumes` on each, then
    ``tumour_growth.tumour_growth`` over all)."""
    clock = clock or StageClock(COMPARE_STAGES)
    for label, timepoint in (("baseline", baseline), ("follow-up", followup)):
        missing = [role for role in CHANGE_REQUIRED_ROLES[pipeline] if not timepoint.instances.get(role)]
        if missing:
            raise MissingSequence(study_key, f"the {label} study has no {', '.join(missing)} series for {pipeline}",
                                  stage=STAGE)
    section = LongitudinalReport(
        baseline_study_instance_uid=baseline.study_instance_uid,
        followup_study_instance_uid=followup.study_instance_uid,
        baseline_study_date=baseline.study_date,
        followup_study_date=followup.study_date,
        pipelines=[pipeline.value],
    )
    if pipeline is ChangePipeline.MS:
        return _ms_change(section, baseline, followup, backend, settings, study_key, clock)
    if pipeline is ChangePipeline.HAEMATOMA:
        return _haematoma_change(section, baseline, followup, backend, settings, study_key, clock)
    if pipeline is ChangePipeline.METASTASES_RESPONSE:
        return _metastases_response(section, baseline, followup, backend, settings, study_key, clock)
    volumes = [measure_glioma_volumes(t.instances, backend, settings, study_key=study_key, clock=clock,
                                      volumes_of=t.volumes) for t in (baseline, followup)]
    # No plot file: PairResult carries DICOM objects only; a caller that wants the plot renders
    # tumour_growth.growth_plot_svg(section.tumour_growth) and sets plot_file.
    growth = tumour_growth([GliomaTimepoint(t.study_instance_uid, t.study_date, v)
                            for t, v in zip((baseline, followup), volumes, strict=True)], plot_file=None)
    return PairResult(section.model_copy(update={"tumour_growth": growth}), {}, [])


def measure_glioma_volumes(
    instances: Mapping[SeriesRole, Sequence[Dataset]], backend: InferenceBackend, settings: NeuroflowSettings,
    *, study_key: str, clock: StageClock, volumes_of: Mapping[SeriesRole, str] | None = None,
) -> TumourVolumes:
    """The glioma pipeline's volumes (WT/TC/ET, mL) of one timepoint: the same preprocessing, model and
    post-processing as the glioma pipeline, without its result objects."""
    models = settings.models
    pre = preprocess_glioma({role: list(instances[role]) for role in GLIOMA_INPUT_ROLES}, backend,
                            (models.skull_strip_bbox, models.skull_strip), spacing_mm=settings.target_spacing_mm,
                            study_key=study_key, clock=clock, volumes_of=volumes_of)
    with clock.stage("segment"):
        probabilities = predict_regions(pre.normalised, pre.brain_mask, backend, models.glioma,
                                        overlap=settings.window_overlap, batch_size=settings.window_batch_size,
                                        study_key=study_key)
    with clock.stage("postprocess"):
        return TumourVolumes.from_label_map(label_map(probabilities, pre.brain_mask))


@dataclass(frozen=True)
class MetastasesMeasure:
    """The metastases pipeline's lesions of one timepoint, measured on its T1CE as acquired, with what they
    were found on (the preprocessed study: normalised volumes and brain mask on the 1 mm grid)."""

    lesions: Lesions
    t1ce_image: Volume
    t1ce_instances: list[Dataset]
    pre: PreprocessedStudy


def measure_metastases(
    instances: Mapping[SeriesRole, Sequence[Dataset]], backend: InferenceBackend, settings: NeuroflowSettings,
    *, study_key: str, clock: StageClock, volumes_of: Mapping[SeriesRole, str] | None = None,
) -> MetastasesMeasure:
    """The metastases pipeline's lesions of one study (T1CE, FLAIR when present): the same preprocessing onto the
    T1CE, model and lesion split as the metastases pipeline, without its result objects."""
    models = settings.models
    volumes_of = volumes_of or {}
    present = {role: list(instances[role]) for role in (SeriesRole.T1CE, SeriesRole.FLAIR) if instances.get(role)}
    pre = preprocess_glioma(present, backend, (models.skull_strip_bbox, models.skull_strip),
                            spacing_mm=settings.target_spacing_mm, study_key=study_key, clock=clock,
                            volumes_of=volumes_of, reference_role=SeriesRole.T1CE)
    with clock.stage("segment"):
        probability = predict_metastases(pre.normalised, pre.brain_mask, backend, models.metastases,
                                         overlap=settings.window_overlap, batch_size=settings.window_batch_size,
                                         study_key=study_key, mirrors=settings.segmentation.metastases_mirrors)
    with clock.stage("postprocess"):
        t1ce = volume_instances(present[SeriesRole.T1CE], study_key=study_key,
                                volume=volumes_of.get(SeriesRole.T1CE, ""))
        t1ce_image = series_to_volume(t1ce, study_key=study_key)
        return MetastasesMeasure(lesions_on(probability, t1ce_image.geometry), t1ce_image, t1ce, pre)


def register_prior(prior: PreprocessedStudy, followup: PreprocessedStudy) -> RegistrationResult:
    """The prior's T1CE rigidly registered onto the follow-up's (both skull-stripped and normalised, the metric
    inside the follow-up's brain, ``register_sessions``); its transform maps follow-up points to the prior's own
    patient coordinates."""
    return register_sessions(followup.normalised[SeriesRole.T1CE], prior.normalised[SeriesRole.T1CE],
                             fixed_mask=followup.brain_mask)


def _metastases_response(section: LongitudinalReport, baseline: Timepoint, followup: Timepoint,
                         backend: InferenceBackend, settings: NeuroflowSettings, study_key: str,
                         clock: StageClock) -> PairResult:
    before, after = (measure_metastases(t.instances, backend, settings, study_key=study_key, clock=clock,
                                        volumes_of=t.volumes) for t in (baseline, followup))
    warnings: list[str] = []
    with clock.stage("register_pair"):
        registration = register_prior(before.pre, after.pre)
        clock.note(f"prior T1CE -> follow-up T1CE: NMI {registration.nmi_before:.3f} -> {registration.nmi:.3f}, "
                   f"{registration.translation_mm:.1f} mm, {registration.rotation_deg:.1f} deg")
        if registration.nmi < MIN_PAIR_NMI:
            warnings.append(f"the prior T1CE registered poorly onto the follow-up (normalised mutual information "
                            f"{registration.nmi:.3f} < {MIN_PAIR_NMI}); check the lesion matches")
    with clock.stage("match_lesions"):
        on_followup = prior_on_followup(before.lesions, after.t1ce_image.geometry, registration.transform)
        thickness = before.t1ce_instances[0].get("SliceThickness")
        response = metastases_response(before.lesions, after.lesions, on_followup,
                                       slice_thickness_mm=float(thickness) if thickness not in (None, "") else None)
        # A prior lesion the follow-up did not image is not resolved: say so where the reader looks.
        warnings += [f"prior Met {e.prior_number} lies outside the follow-up T1CE's field of view: reported "
                     "resolved, but it was not imaged" for e in response.lesions
                     if e.status is LesionStatus.RESOLVED and not _inside(e.centroid_mm, after.t1ce_image.geometry)]
        counts = ", ".join(f"{n} {status}" for status, n in response.counts.items() if n)
        clock.note(f"{counts or 'no metastasis'}; RANO-BM {response.rano_bm.category}")
    model = settings.models.metastases
    response = response.model_copy(update={
        "registration": registration.summary(),
        "review": provisional_review(model, f"{len(response.lesions)} lesion(s) followed, RANO-BM "
                                            f"{response.rano_bm.category}")})
    section = section.model_copy(update={"metastases_response": response})
    key = _pair_hash(baseline, followup, [SeriesRole.T1CE], model)
    with clock.stage("change_results"):
        pair_report = StudyReport(study_instance_uid=followup.study_instance_uid, study_key=study_key,
                                  pipeline=ChangePipeline.METASTASES_RESPONSE.value, status=ReportStatus.SUCCEEDED,
                                  model=model, longitudinal=section, warnings=warnings)
        sr = metastases_response_sr(pair_report, after.t1ce_instances, input_hash=key, objects=settings.results)
    return PairResult(section, {METASTASES_RESPONSE_SR_FILE: [sr]}, warnings)


def _inside(point_mm: Sequence[float], geometry: Geometry) -> bool:
    """Whether ``point_mm`` (LPS) lies within the grid's voxels."""
    index = np.linalg.inv(geometry.index_to_patient()) @ np.array([*point_mm, 1.0])
    return bool(all(-0.5 <= index[axis] <= geometry.size[axis] - 0.5 for axis in range(3)))


def _ms_change(section: LongitudinalReport, baseline: Timepoint, followup: Timepoint, backend: InferenceBackend,
               settings: NeuroflowSettings, study_key: str, clock: StageClock) -> PairResult:
    roles = [role for role in roles_for(ChangePipeline.MS) if baseline.instances.get(role)
             and followup.instances.get(role)]
    with clock.stage("convert_pair"):
        base = _volumes(baseline, roles, study_key)
        follow = _volumes(followup, roles, study_key)
    change: MsLesionChange = detect_new_ms_lesions(base, follow, backend, settings.models, study_key=study_key,
                                                   clock=clock, atlas_dir=settings.longitudinal.atlas_dir)
    flair = volume_instances(followup.instances[SeriesRole.FLAIR], study_key=study_key,
                             volume=followup.volumes.get(SeriesRole.FLAIR, ""))
    algorithm = settings.models.ms_lesion or MS_SUBTRACTION
    key = _pair_hash(baseline, followup, roles, algorithm)
    datasets: dict[str, list[Dataset]] = {}
    objects = settings.results
    lesions = [NewLesionEntry(centroid_mm=_point(lesion.centroid_mm), volume_mm3=round(lesion.volume_mm3, 1),
                              location=lesion.location, kind=lesion.kind) for lesion in change.new_lesions]
    section = section.model_copy(update={
        "new_lesions": lesions, "new_lesion_count": len(lesions), "new_activity": change.new_activity,
        "rejected_candidates": len(change.rejected), "ms_detectable_change": change.detectable_change,
        "ms_sensitivity_limited": change.sensitivity_limited,
    })
    with clock.stage("change_results"):
        seg = ms_lesion_seg(change.labels, flair, input_hash=key, algorithm=algorithm, objects=objects)
        if seg is not None:
            datasets[MS_SEG_FILE] = [seg]
        datasets[MS_OVERLAY_FOLDER] = change_overlay(follow[SeriesRole.FLAIR], change.labels, flair, input_hash=key,
                                                     objects=objects)
        # The SR says what the section says: the count, each lesion's volume, kind and location.
        pair_report = StudyReport(study_instance_uid=followup.study_instance_uid, study_key=study_key,
                                  pipeline=ChangePipeline.MS.value, status=ReportStatus.SUCCEEDED, model=algorithm,
                                  longitudinal=section, warnings=list(change.warnings))
        datasets[MS_SR_FILE] = [ms_change_sr(pair_report, flair, input_hash=key, objects=objects)]
    warnings = list(change.warnings)
    if seg is None:
        warnings.append("no new MS lesion: no DICOM SEG of new lesions written")
    return PairResult(section, datasets, warnings)


def _haematoma_change(section: LongitudinalReport, baseline: Timepoint, followup: Timepoint,
                      backend: InferenceBackend, settings: NeuroflowSettings, study_key: str,
                      clock: StageClock) -> PairResult:
    with clock.stage("convert_pair"):
        base_ct, follow_ct = (_volumes(t, [SeriesRole.CT], study_key)[SeriesRole.CT] for t in (baseline, followup))
    change = measure_haematoma_change(base_ct, follow_ct, study_key=study_key, backend=backend, clock=clock,
                                      model=settings.models.haematoma)
    algorithm = settings.models.haematoma or HAEMATOMA_HU
    key = _pair_hash(baseline, followup, [SeriesRole.CT], algorithm)
    datasets: dict[str, list[Dataset]] = {}
    warnings = list(change.warnings)
    with clock.stage("change_results"):
        for name, mask, instances, label in (
                (HAEMATOMA_BASELINE_SEG_FILE, change.baseline_mask, baseline.instances[SeriesRole.CT], "baseline"),
                (HAEMATOMA_FOLLOWUP_SEG_FILE, change.followup_mask, followup.instances[SeriesRole.CT], "follow-up")):
            seg = haematoma_seg(mask, instances, input_hash=key, timepoint=label, algorithm=algorithm,
                                objects=settings.results)
            if seg is None:
                warnings.append(f"no haematoma at {label}: no DICOM SEG written for it")
            else:
                datasets[name] = [seg]
    section = section.model_copy(update={"haematoma": haematoma_section(change)})
    return PairResult(section, datasets, warnings)


def haematoma_section(change: HaematomaChange) -> HaematomaSection:
    """The report's view of a haematoma change (volumes rounded to 0.01 mL, lengths to 0.1 mm)."""
    base, follow = change.baseline, change.followup
    return HaematomaSection(
        baseline_ml=round(base.volume_ml, 2) if base else 0.0,
        followup_ml=round(follow.volume_ml, 2) if follow else 0.0,
        change_ml=round(change.change_ml, 2),
        change_pct=round(change.change_pct, 1) if change.change_pct is not None else None,
        expansion=change.expansion,
        centroid_shift_mm=round(change.centroid_shift_mm, 1) if change.centroid_shift_mm is not None else None,
        baseline_diameters=_diameters(base),
        diameters=_diameters(follow),
        diameter_change=(DiametersMm(ap_mm=round(change.diameter_change.ap_mm, 1),
                                     lr_mm=round(change.diameter_change.lr_mm, 1),
                                     cc_mm=round(change.diameter_change.cc_mm, 1))
                         if change.diameter_change is not None else None),
        baseline_main_axis=_axis(base),
        main_axis=_axis(follow),
        baseline_regularity=round(base.regularity, 3) if base else None,
        regularity=round(follow.regularity, 3) if follow else None,
        baseline_others_ml=list(change.baseline_others_ml),
        others_ml=list(change.followup_others_ml),
    )


def _diameters(measure: HaematomaMeasure | None) -> DiametersMm | None:
    if measure is None:
        return None
    d = measure.diameters
    return DiametersMm(ap_mm=round(d.ap_mm, 1), lr_mm=round(d.lr_mm, 1), cc_mm=round(d.cc_mm, 1))


def _axis(measure: HaematomaMeasure | None) -> tuple[float, float, float] | None:
    return _point(measure.main_axis, 4) if measure is not None else None


def _point(values: Sequence[float], digits: int = 2) -> tuple[float, float, float]:
    x, y, z = (round(float(v), digits) for v in values)
    return x, y, z


def _volumes(timepoint: Timepoint, roles: Sequence[SeriesRole], study_key: str) -> dict[SeriesRole, Volume]:
    return {role: series_to_volume(timepoint.instances[role], study_key=study_key,
                                   volume=timepoint.volumes.get(role, "")) for role in roles}


def _pair_hash(baseline: Timepoint, followup: Timepoint, roles: Sequence[SeriesRole], algorithm: ModelRef) -> str:
    """The pair's identity: the algorithm and, per timepoint and role, the SOPInstanceUIDs used."""
    uids: Mapping[str, list[str]] = {
        f"{label}/{role}": [*(str(ds.SOPInstanceUID) for ds in timepoint.instances[role]),
                            *([f"#{timepoint.volumes[role]}"] if timepoint.volumes.get(role) else [])]
        for label, timepoint in (("baseline", baseline), ("followup", followup)) for role in roles
    }
    return input_hash(uids, algorithm)

