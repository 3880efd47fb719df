"""Routing: which pipelines a classified study qualifies for, and why not when it qualifies for none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from neuroflow.core.config import GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE, ClassifySettings
from neuroflow.core.errors import AmbiguousRole, MissingSequence
from neuroflow.core.model_card import ModelCard
from neuroflow.core.roles import (
    CHANGE_FOLLOWS,
    CHANGE_REQUIRED_ROLES,
    GLIOMA_INPUT_ROLES,
    METASTASES_INPUT_ROLES,
    ChangePipeline,
    SeriesRole,
)
from neuroflow.core.sequence_subsets import PipelineInputs
from neuroflow.ingest.classify import SeriesClassification, effective_policy, select_inputs
from neuroflow.ingest.postoperative import PriorTumour, postoperative_evidence
from neuroflow.ingest.site_rules import SiteRules

# The series roles each pipeline needs, in the order its model takes them: the one place this is said
# (the change pipelines' roles, needed in both studies of a pair, come from core.roles). The glioma
# pipeline's are its model card's when the runtime passes the card (``pipeline_inputs``).
PIPELINE_INPUT_ROLES: Mapping[str, tuple[SeriesRole, ...]] = {
    GLIOMA_PIPELINE: GLIOMA_INPUT_ROLES,
    GLIOMA_POSTOP_PIPELINE: GLIOMA_INPUT_ROLES,  # the glioma pipeline's inputs and model, plus the cavity step
    METASTASES_PIPELINE: METASTASES_INPUT_ROLES,
    **{pipeline.value: roles for pipeline, roles in CHANGE_REQUIRED_ROLES.items()},
}


def pipeline_inputs(glioma_card: ModelCard | None) -> dict[str, PipelineInputs]:
    """What each pipeline takes: every role of PIPELINE_INPUT_ROLES required, except the glioma pipeline's,
    which are what its model's card says (a card with ``min_roles_any`` takes studies lacking some), and the
    metastases pipeline's (T1CE required, FLAIR used when present). Both
    runtimes route with this, so a study qualifies for the same pipelines in each."""
    inputs = {pipeline: PipelineInputs(roles) for pipeline, roles in PIPELINE_INPUT_ROLES.items()}
    # Metastases: enhancement is read on the T1CE, which a study must have; FLAIR (oedema) only helps.
    inputs[METASTASES_PIPELINE] = PipelineInputs(METASTASES_INPUT_ROLES, (SeriesRole.T1CE,))
    if glioma_card is not None:
        inputs[GLIOMA_PIPELINE] = inputs[GLIOMA_POSTOP_PIPELINE] = PipelineInputs.of_card(glioma_card)
    return inputs


def qualify(classified: Sequence[SeriesClassification], inputs: PipelineInputs, *, study_key: str,
            policy: ClassifySettings | None = None) -> dict[SeriesRole, SeriesClassification]:
    """The series chosen for each input role the study has (``select_inputs``), or the refusal:
    MissingSequence naming the study and what it lacks (every role when all are required; the roles it
    needs one of otherwise), AmbiguousRole naming the candidates of a role too close to call."""
    return select_inputs(classified, inputs.roles, study_key=study_key, policy=policy,
                         at_least_one_of=inputs.at_least_one_of)


@dataclass(frozen=True)
class Route:
    pipeline: str
    inputs: dict[SeriesRole, SeriesClassification]


@dataclass(frozen=True)
class RoutingOutcome:
    routes: list[Route]
    refusals: dict[str, str]  # pipeline -> the required series the study lacks (a sentence a person can act on)
    not_routed: dict[str, str]  # pipeline -> the site rule that keeps the study from it
    # pipeline -> the required role two different protocols are too close to call for, naming them
    ambiguous: dict[str, str] = field(default_factory=dict)
    # Why the study was taken as post-operative (its glioma route became glioma_postop); empty when it was not.
    postoperative: list[str] = field(default_factory=list)


def route_study(classified: Sequence[SeriesClassification], pipelines: Sequence[str], *,
                study_key: str, rules: SiteRules | None = None,
                study_tags: Mapping[str, str] | None = None,
                policy: ClassifySettings | None = None,
                inputs: Mapping[str, PipelineInputs] | None = None,
                prior: PriorTumour | None = None) -> RoutingOutcome:
    """For each pipeline enabled at the site (what each takes: ``inputs``, by default
    ``pipeline_inputs(None)``): the series chosen for each of its input roles, or the
    reason the study does not qualify: the site's routing rule refuses it by its study tags, a
    required role is missing (the MissingSequence message, naming what is missing and what the
    study holds), or it is ambiguous (the AmbiguousRole message, naming the candidates)."""
    routes: list[Route] = []
    refusals: dict[str, str] = {}
    not_routed: dict[str, str] = {}
    ambiguous: dict[str, str] = {}
    policy = effective_policy(policy, rules)
    takes = {**pipeline_inputs(None), **(inputs or {})}
    for pipeline in pipelines:
        # A change pipeline that follows a single-study pipeline's patients (the metastases response) is held to
        # that pipeline's site rules as well as its own: a glioma patient's T1CE is no metastases follow-up.
        followed = CHANGE_FOLLOWS.get(ChangePipeline(pipeline)) if pipeline in set(ChangePipeline) else None
        if rules is not None and (why := next((r for name in (pipeline, followed) if name is not None
                                               and (r := rules.route_refusal(name, dict(study_tags or {})))
                                               is not None), None)) is not None:
            not_routed[pipeline] = why
            continue
        try:
            chosen = qualify(classified, takes[pipeline], study_key=study_key, policy=policy)
        except MissingSequence as exc:
            refusals[pipeline] = exc.reason
            continue
        except AmbiguousRole as exc:
            ambiguous[pipeline] = exc.reason
            continue
        routes.append(Route(pipeline, chosen))
    evidence = postoperative_route(routes, classified, study_tags or {}, rules, prior, not_routed)
    return RoutingOutcome(routes, refusals, not_routed, ambiguous, evidence)


def postoperative_route(routes: list[Route], classified: Sequence[SeriesClassification],
                        study_tags: Mapping[str, str], rules: SiteRules | None, prior: PriorTumour | None,
                        not_routed: dict[str, str]) -> list[str]:
    """A glioma route of a post-operative study (its study or series descriptions say so, the site's
    ``postoperative_patterns`` included, or ``prior`` had tumour) becomes a ``glioma_postop`` route, in place
    (the same series: the glioma model, trained on studies before surgery, counts a resection cavity as tumour
    or misses it, and a plain result would report neither the cavity nor the residual tumour as such). A site
    route rule that refuses glioma_postop keeps it glioma (the refusal in ``not_routed``). Returns the evidence;
    empty when the study is not taken as post-operative."""
    at = next((i for i, r in enumerate(routes) if r.pipeline == GLIOMA_PIPELINE), None)
    if at is None:
        return []
    descriptions = [str(study_tags.get("StudyDescription", "")), *(c.description for c in classified)]
    evidence = postoperative_evidence(descriptions, prior=prior,
                                      extra_patterns=rules.postoperative_patterns if rules is not None else ())
    if not evidence:
        return []
    if rules is not None and (why := rules.route_refusal(GLIOMA_POSTOP_PIPELINE, dict(study_tags))) is not None:
        not_routed[GLIOMA_POSTOP_PIPELINE] = why
        return []
    routes[at] = Route(GLIOMA_POSTOP_PIPELINE, routes[at].inputs)
    return evidence
