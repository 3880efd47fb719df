"""Pipelines as data: each is a list of stages plus the few facts its tasks need. The orchestrator walks the
list; what a stage's task carries is built from the StudyReady and the earlier stages' answers, the same
way for every pipeline that uses the stage."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from neuroflow.core import topics
from neuroflow.core.config import (
    CHANGE_ALGORITHM_VERSION,
    GLIOMA_PIPELINE,
    GLIOMA_POSTOP_PIPELINE,
    METASTASES_PIPELINE,
    PipelineModels,
)
from neuroflow.core.roles import CHANGE_REQUIRED_ROLES, GLIOMA_REFERENCE_ORDER, ChangePipeline, SeriesRole
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2

StageInput = (tasks_pb2.PreprocessInput | tasks_pb2.SegmentationInput | tasks_pb2.ResultsInput
              | tasks_pb2.LongitudinalInput)


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline: its name (as StudyReady.pipeline says it), its stages in order, the segmentation model
    it runs and the role every other series is registered onto; when a study was routed without that role
    (a model that takes a subset of its inputs), the first of ``reference_fallbacks`` it has.
    ``notice_on_failure``: a workflow that fails asks the results stage for the failure notice PACS gets in
    place of the result (``ResultsInput.failure``)."""

    name: str
    stages: tuple[common_pb2.Stage.ValueType, ...]
    model: common_pb2.ModelRef
    reference_role: str
    reference_fallbacks: tuple[str, ...] = ()
    notice_on_failure: bool = False

    def reference_of(self, roles: Iterable[str]) -> str:
        """The reference role for a study routed with ``roles``: ``reference_role`` when it is among them
        (or none of the fallbacks is: preprocessing then refuses, naming it), else the first fallback there."""
        have = set(roles)
        return next((r for r in (self.reference_role, *self.reference_fallbacks) if r in have), self.reference_role)

    def __post_init__(self) -> None:
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"pipeline {self.name!r}: stages must be a non-empty list without repeats")
        for stage in self.stages:
            topics.stage_name(stage)  # refuses STAGE_UNSPECIFIED and unknown values

    def next_stage(self, stage: common_pb2.Stage.ValueType) -> common_pb2.Stage.ValueType | None:
        """The stage after ``stage``, or None when ``stage`` is the last. ValueError if not in the list."""
        index = self.stages.index(stage)
        return self.stages[index + 1] if index + 1 < len(self.stages) else None


def glioma_pipeline(models: PipelineModels) -> PipelineSpec:
    """The glioma pipeline: preprocess -> segmentation -> results, with the configured glioma model."""
    return PipelineSpec(
        name=GLIOMA_PIPELINE,
        stages=(common_pb2.STAGE_PREPROCESS, common_pb2.STAGE_SEGMENTATION, common_pb2.STAGE_RESULTS),
        model=common_pb2.ModelRef(name=models.glioma.name, version=models.glioma.version),
        reference_role=GLIOMA_REFERENCE_ORDER[0].value,
        reference_fallbacks=tuple(r.value for r in GLIOMA_REFERENCE_ORDER[1:]),
        notice_on_failure=True,
    )


def glioma_postop_pipeline(models: PipelineModels) -> PipelineSpec:
    """The post-operative glioma pipeline (issue 15): the glioma pipeline's stages, model and reference, under
    its own name, so the segmentation stage carves the resection cavity into the label map and the results
    stage reports it (ingest routes a post-operative study here instead of to glioma)."""
    return replace(glioma_pipeline(models), name=GLIOMA_POSTOP_PIPELINE)


def metastases_pipeline(models: PipelineModels) -> PipelineSpec:
    """The metastases pipeline (issue 15): the glioma stages with the metastases model, registered onto the
    T1CE (which routing requires); the segmentation stage hands on the probability, the results stage splits
    and measures the lesions on the T1CE grid."""
    return PipelineSpec(
        name=METASTASES_PIPELINE,
        stages=(common_pb2.STAGE_PREPROCESS, common_pb2.STAGE_SEGMENTATION, common_pb2.STAGE_RESULTS),
        model=common_pb2.ModelRef(name=models.metastases.name, version=models.metastases.version),
        reference_role=SeriesRole.T1CE.value,
        notice_on_failure=True,
    )


def change_pipeline(name: str) -> PipelineSpec:
    """A change pipeline (``ms_change``, ``haematoma_change``, ``tumour_growth``, ``metastases_response``): one
    longitudinal stage, which finds the prior, compares the pair and stores and forwards its result objects
    itself (the results stage encodes glioma label maps only)."""
    pipeline = ChangePipeline(name)  # ValueError for a name that is not a change pipeline
    return PipelineSpec(
        name=pipeline.value, stages=(common_pb2.STAGE_LONGITUDINAL,),
        model=common_pb2.ModelRef(name=pipeline.value, version=CHANGE_ALGORITHM_VERSION),
        reference_role=CHANGE_REQUIRED_ROLES[pipeline][0].value,
    )


class MissingStageOutput(ValueError):
    """A stage's task needs an earlier stage's answer that the workflow does not have."""


def build_input(
    stage: common_pb2.Stage.ValueType,
    spec: PipelineSpec,
    ready: events_pb2.StudyReady,
    outputs: Mapping[common_pb2.Stage.ValueType, tasks_pb2.TaskDone],
    *,
    destination: str,
) -> StageInput:
    """The input of ``stage``'s task: from the StudyReady (series, roles) and the answers of the stages
    before it (``outputs``, by stage). Refuses (MissingStageOutput) when a needed answer is missing and
    (ValueError) a stage that has no input defined here."""

    def answer(of: common_pb2.Stage.ValueType) -> tasks_pb2.TaskDone:
        if of not in outputs:
            raise MissingStageOutput(f"pipeline {spec.name}: {topics.stage_name(stage)} needs the output of "
                                     f"{topics.stage_name(of)}, which has not run")
        return outputs[of]

    if stage == common_pb2.STAGE_PREPROCESS:
        # A post-operative study's prior (routing's): its tumour locates the resection cavity.
        prior = ready.baseline_study_instance_uid if ready.pipeline == GLIOMA_POSTOP_PIPELINE else ""
        return tasks_pb2.PreprocessInput(series=ready.series,
                                         reference_role=spec.reference_of(s.role for s in ready.series),
                                         prior_study_instance_uid=prior)
    if stage == common_pb2.STAGE_SEGMENTATION:
        pre = answer(common_pb2.STAGE_PREPROCESS).preprocess
        segmentation = tasks_pb2.SegmentationInput(volumes=pre.volumes, brain_mask=pre.brain_mask, model=spec.model)
        if pre.HasField("prior_tumour"):
            segmentation.prior_tumour.CopyFrom(pre.prior_tumour)
        return segmentation
    if stage == common_pb2.STAGE_RESULTS:
        seg = answer(common_pb2.STAGE_SEGMENTATION).segmentation
        return tasks_pb2.ResultsInput(label_map=seg.label_map, referenced_series=ready.series,
                                      region_volumes_ml=seg.region_volumes_ml, model=seg.model,
                                      destination=destination)
    if stage == common_pb2.STAGE_LONGITUDINAL:
        return tasks_pb2.LongitudinalInput(series=ready.series,
                                           baseline_study_instance_uid=ready.baseline_study_instance_uid,
                                           prior_wait_expired=ready.prior_wait_expired, destination=destination)
    raise ValueError(f"no task input defined for stage {topics.stage_name(stage)}")


def notice_input(spec: PipelineSpec, ready: events_pb2.StudyReady, failure: tasks_pb2.FailureNotice, *,
                 destination: str) -> tasks_pb2.ResultsInput:
    """The results task of a failed workflow: no label map; the failure, and the routed series the notice is
    filed under (their study's patient and study attributes)."""
    return tasks_pb2.ResultsInput(referenced_series=ready.series, model=spec.model, destination=destination,
                                  failure=failure)
