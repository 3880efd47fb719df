"""Routing of the metastases pipeline (issue 15): a study qualifies with a T1 post-contrast, FLAIR joining when
present; without a T1CE it is refused, naming what it lacks; a site's routing rule narrows it further."""

from __future__ import annotations

from neuroflow.core.config import METASTASES_PIPELINE, METASTASES_RESPONSE_PIPELINE
from neuroflow.core.roles import SeriesRole
from neuroflow.ingest.classify import SeriesClassification
from neuroflow.ingest.routing import route_study
from neuroflow.ingest.site_rules import PipelineRoute, SiteRules


def _series(*roles: SeriesRole) -> list[SeriesClassification]:
    return [SeriesClassification(series_instance_uid=f"1.2.3.{n}", series_number=n, description=f"{role} series",
                                 role=role, confidence=0.95, reasons=("test",), is_3d=True)
            for n, role in enumerate(roles, start=1)]


def test_t1ce_alone_qualifies_and_flair_joins_when_present() -> None:
    alone = route_study(_series(SeriesRole.T1CE, SeriesRole.T2), [METASTASES_PIPELINE], study_key="k1")
    assert [r.pipeline for r in alone.routes] == [METASTASES_PIPELINE]
    assert set(alone.routes[0].inputs) == {SeriesRole.T1CE}
    both = route_study(_series(SeriesRole.FLAIR, SeriesRole.T1CE, SeriesRole.T1), [METASTASES_PIPELINE],
                       study_key="k2")
    assert set(both.routes[0].inputs) == {SeriesRole.T1CE, SeriesRole.FLAIR}


def test_a_study_without_t1ce_is_refused_naming_it() -> None:
    outcome = route_study(_series(SeriesRole.FLAIR, SeriesRole.T1), [METASTASES_PIPELINE], study_key="k3")
    assert not outcome.routes
    assert "T1CE" in outcome.refusals[METASTASES_PIPELINE]


def test_a_site_rule_keeps_other_studies_from_the_pipeline() -> None:
    rules = SiteRules(routes=[PipelineRoute(pipeline=METASTASES_PIPELINE, study_description="METS|SRS")])
    study = _series(SeriesRole.T1CE, SeriesRole.FLAIR)
    kept_out = route_study(study, [METASTASES_PIPELINE], study_key="k4", rules=rules,
                           study_tags={"StudyDescription": "MRI BRAIN W WO CONTRAST"})
    assert not kept_out.routes and METASTASES_PIPELINE in kept_out.not_routed
    routed = route_study(study, [METASTASES_PIPELINE], study_key="k5", rules=rules,
                         study_tags={"StudyDescription": "MRI BRAIN SRS PLANNING"})
    assert [r.pipeline for r in routed.routes] == [METASTASES_PIPELINE]


def test_the_metastases_follow_up_goes_where_the_metastases_pipeline_goes() -> None:
    # A site that follows its metastases patients: the follow-up pipeline is held to the metastases rule too, so a
    # glioma patient's T1CE is not compared lesion by lesion, while an SRS patient's is.
    rules = SiteRules(routes=[PipelineRoute(pipeline=METASTASES_PIPELINE, study_description="METS|SRS")])
    study = _series(SeriesRole.T1CE, SeriesRole.FLAIR)
    enabled = [METASTASES_PIPELINE, METASTASES_RESPONSE_PIPELINE]
    glioma_patient = route_study(study, enabled, study_key="k6", rules=rules,
                                 study_tags={"StudyDescription": "MRI BRAIN GLIOMA FOLLOW-UP"})
    assert not glioma_patient.routes
    assert "METS|SRS" in glioma_patient.not_routed[METASTASES_RESPONSE_PIPELINE]
    srs_patient = route_study(study, enabled, study_key="k7", rules=rules,
                              study_tags={"StudyDescription": "MRI BRAIN SRS FOLLOW-UP"})
    assert [r.pipeline for r in srs_patient.routes] == enabled
    # It needs the T1CE (at both timepoints: the longitudinal stage checks the prior) and takes FLAIR's absence.
    assert set(srs_patient.routes[1].inputs) == {SeriesRole.T1CE}
