"""Routing of post-operative glioma studies (issue 15, seed S001): a glioma study whose study or series
description says it follows surgery (in English, German, French, Dutch, or the site's own words), or whose
patient's prior study had tumour, goes to glioma_postop in place of glioma; a pre-operative study, or one a site
rule keeps from glioma_postop, stays with glioma; the distributed runtime and neuroflow run know the pipeline."""

from __future__ import annotations

import pytest

from neuroflow.core.config import GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.ingest.classify import SeriesClassification
from neuroflow.ingest.postoperative import PriorTumour, description_evidence
from neuroflow.ingest.routing import route_study
from neuroflow.ingest.site_rules import PipelineRoute, SiteRules
from neuroflow.orchestrator.pipelines import glioma_pipeline
from neuroflow.runtime.distributed import pipelines
from neuroflow.runtime.pipeline_files import pipeline_models


def _series(description: str = "") -> list[SeriesClassification]:
    return [SeriesClassification(series_instance_uid=f"1.2.3.{n}", series_number=n,
                                 description=f"{role} {description}".strip(), role=role, confidence=0.95,
                                 reasons=("test",), is_3d=True)
            for n, role in enumerate(GLIOMA_INPUT_ROLES, start=1)]


@pytest.mark.parametrize("description", [
    "MRI BRAIN POST OP", "MR Kopf postop", "Post-OP Kontrolle", "MRT Schädel postoperativ", "MR Kopf nach OP",
    "IRM cérébrale postopératoire", "MRI hersenen postoperatief", "s/p resection GBM", "post-resection MRI",
    "Status post craniotomy", "resection cavity follow-up"])
def test_a_study_described_post_operative_goes_to_glioma_postop(description: str) -> None:
    outcome = route_study(_series(), [GLIOMA_PIPELINE], study_key="k1", study_tags={"StudyDescription": description})
    assert [r.pipeline for r in outcome.routes] == [GLIOMA_POSTOP_PIPELINE]
    assert outcome.postoperative and description in outcome.postoperative[0]


@pytest.mark.parametrize("description", ["MRI BRAIN W WO CONTRAST", "MRI brain pre-op planning",
                                         "MRT Schädel präoperativ", "OPTIC NERVES", "T1 MPRAGE TOPO"])
def test_other_studies_stay_with_glioma(description: str) -> None:
    outcome = route_study(_series(), [GLIOMA_PIPELINE], study_key="k2", study_tags={"StudyDescription": description})
    assert [r.pipeline for r in outcome.routes] == [GLIOMA_PIPELINE]
    assert outcome.postoperative == []


def test_a_series_description_is_evidence_too() -> None:
    outcome = route_study(_series("postop"), [GLIOMA_PIPELINE], study_key="k3",
                          study_tags={"StudyDescription": "MRI BRAIN"})
    assert [r.pipeline for r in outcome.routes] == [GLIOMA_POSTOP_PIPELINE]


def test_a_prior_with_tumour_makes_the_study_post_operative() -> None:
    tags = {"StudyDescription": "MRI BRAIN W WO CONTRAST"}
    with_tumour = route_study(_series(), [GLIOMA_PIPELINE], study_key="k4", study_tags=tags,
                              prior=PriorTumour(study_date="20240101", tumour_ml=32.5))
    assert [r.pipeline for r in with_tumour.routes] == [GLIOMA_POSTOP_PIPELINE]
    assert "prior study of 20240101 had tumour (32.5 mL)" in with_tumour.postoperative[0]
    without = route_study(_series(), [GLIOMA_PIPELINE], study_key="k5", study_tags=tags,
                          prior=PriorTumour(study_date="20240101", tumour_ml=0.0))
    assert [r.pipeline for r in without.routes] == [GLIOMA_PIPELINE]


def test_the_post_operative_route_takes_the_glioma_series() -> None:
    study = _series()
    plain = route_study(study, [GLIOMA_PIPELINE], study_key="k6", study_tags={"StudyDescription": "MRI"})
    postop = route_study(study, [GLIOMA_PIPELINE], study_key="k6", study_tags={"StudyDescription": "MRI post op"})
    assert postop.routes[0].inputs == plain.routes[0].inputs


def test_site_patterns_and_route_rules_decide_at_a_site() -> None:
    tags = {"StudyDescription": "MRT Kontrolle nach Tumorentfernung"}
    assert route_study(_series(), [GLIOMA_PIPELINE], study_key="k7", study_tags=tags).routes[0].pipeline \
        == GLIOMA_PIPELINE
    site = SiteRules(postoperative_patterns=["nach tumorentfernung"])
    assert route_study(_series(), [GLIOMA_PIPELINE], study_key="k7", study_tags=tags, rules=site).routes[0].pipeline \
        == GLIOMA_POSTOP_PIPELINE
    # A site whose glioma_postop rule refuses the study keeps it with glioma, saying why.
    narrow = SiteRules(routes=[PipelineRoute(pipeline=GLIOMA_POSTOP_PIPELINE, institution_name="NORTH")])
    kept = route_study(_series(), [GLIOMA_PIPELINE], study_key="k8", rules=narrow,
                       study_tags={"StudyDescription": "MRI POST OP", "InstitutionName": "SOUTH"})
    assert [r.pipeline for r in kept.routes] == [GLIOMA_PIPELINE]
    assert GLIOMA_POSTOP_PIPELINE in kept.not_routed


def test_other_pipelines_are_untouched() -> None:
    study = [*_series(), SeriesClassification(series_instance_uid="1.2.3.9", series_number=9, description="x",
                                              role=SeriesRole.T1CE, confidence=0.5, reasons=("t",), is_3d=True)]
    outcome = route_study(study[:4], [GLIOMA_PIPELINE, METASTASES_PIPELINE], study_key="k9",
                          study_tags={"StudyDescription": "MRI POST OP"})
    assert sorted(r.pipeline for r in outcome.routes) == [GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE]


def test_site_pattern_that_does_not_compile_is_refused() -> None:
    with pytest.raises(ValueError, match="postoperative_patterns"):
        SiteRules(postoperative_patterns=["(unclosed"])


def test_the_distributed_runtime_runs_glioma_postop_as_the_glioma_stages() -> None:
    settings = NeuroflowSettings()
    specs = pipelines(settings)
    glioma = glioma_pipeline(settings.models)
    postop = specs[GLIOMA_POSTOP_PIPELINE]
    assert (postop.stages, postop.model, postop.reference_role) == (glioma.stages, glioma.model,
                                                                    glioma.reference_role)
    assert pipeline_models(GLIOMA_POSTOP_PIPELINE, settings.models) == pipeline_models(GLIOMA_PIPELINE,
                                                                                        settings.models)


def test_description_evidence_names_each_description_once() -> None:
    lines = description_evidence(["MRI POST OP", "MRI POST OP", "T1 MPRAGE"])
    assert lines == ["description 'MRI POST OP' says post-operative"]


def test_the_orchestrator_hands_a_post_operative_studys_prior_to_preprocessing_and_its_tumour_to_segmentation(
        ) -> None:
    """glioma_postop: routing's prior (StudyReady.baseline_study_instance_uid) goes to the preprocess task, the
    prior's tumour preprocessing placed goes to the segmentation task; a glioma study hands on neither."""
    from neuroflow.core.config import PipelineModels
    from neuroflow.orchestrator.pipelines import build_input, glioma_postop_pipeline
    from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2

    series = [common_pb2.SeriesRef(series_instance_uid="1.2.1", role="T1CE"),
              common_pb2.SeriesRef(series_instance_uid="1.2.2", role="FLAIR")]
    prior_tumour = common_pb2.VolumeRef(uri="file:k/wf/prior_tumour", sha256="ab")
    done = {common_pb2.STAGE_PREPROCESS: tasks_pb2.TaskDone(preprocess=tasks_pb2.PreprocessOutput(
        brain_mask=common_pb2.VolumeRef(uri="file:k/wf/brain_mask"), prior_tumour=prior_tumour))}
    for pipeline, spec, handed_on in ((GLIOMA_POSTOP_PIPELINE, glioma_postop_pipeline(PipelineModels()), True),
                                      (GLIOMA_PIPELINE, glioma_pipeline(PipelineModels()), False)):
        ready = events_pb2.StudyReady(pipeline=pipeline, series=series, baseline_study_instance_uid="1.2.9")
        pre = build_input(common_pb2.STAGE_PREPROCESS, spec, ready, {}, destination="")
        assert isinstance(pre, tasks_pb2.PreprocessInput)
        assert pre.prior_study_instance_uid == ("1.2.9" if handed_on else "")
        segmentation = build_input(common_pb2.STAGE_SEGMENTATION, spec, ready, done, destination="")
        assert isinstance(segmentation, tasks_pb2.SegmentationInput)
        assert segmentation.prior_tumour == prior_tumour  # preprocessing only places one for glioma_postop
