"""Routing: which pipelines a classified study qualifies for, and why not when it qualifies for none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from neuroflow.core.config import GLIOMA_PIPELINE, ClassifySettings
from neuroflow.core.errors import AmbiguousRole, MissingSequence
from neuroflow.core.roles import CHANGE_REQUIRED_ROLES, GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.ingest.classify import SeriesClassification, effective_policy, select_inputs
from neuroflow.ingest.site_rules import SiteRules

# The series roles each pipeline needs, in the order its model takes them: the one place this is said
# (the change pipelines' roles, needed in both studies of a pair, come from core.roles).
PIPELINE_INPUT_ROLES: Mapping[str, tuple[SeriesRole, ...]] = {
    GLIOMA_PIPELINE: GLIOMA_INPUT_ROLES,
    **{pipeline.value: roles for pipeline, roles in CHANGE_REQUIRED_ROLES.items()},
}


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


def route_study(classified: Sequence[SeriesClassification], pipelines: Sequence[str], *,
                study_key: str, rules: SiteRules | None = None,
                study_tags: Mapping[str, str] | None = None,
                policy: ClassifySettings | None = None) -> RoutingOutcome:
    """For each pipeline enabled at the site: the series chosen for each of its input roles, or the
    reason the study does not qualify: the site's routing rule refuses it by its study tags, a
    required role is missing (the MissingSequence message, naming what is missing and what the
    study holds), or it is ambiguous (the AmbiguousRole message, naming the candidates)."""
    routes: list[Route] = []
    refusals: dict[str, str] = {}
    not_routed: dict[str, str] = {}
    ambiguous: dict[str, str] = {}
    policy = effective_policy(policy, rules)
    for pipeline in pipelines:
        if rules is not None and (why := rules.route_refusal(pipeline, dict(study_tags or {}))) is not None:
            not_routed[pipeline] = why
            continue
        try:
            chosen = select_inputs(classified, PIPELINE_INPUT_ROLES[pipeline], study_key=study_key, policy=policy)
        except MissingSequence as exc:
            refusals[pipeline] = exc.reason
            continue
        except AmbiguousRole as exc:
            ambiguous[pipeline] = exc.reason
            continue
        routes.append(Route(pipeline, chosen))
    return RoutingOutcome(routes, refusals, not_routed, ambiguous)
