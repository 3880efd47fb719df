"""Site rules: what a site knows about its own series names, written down in YAML.

Heuristics cover the vendors' usual names; a site with its own conventions ("T1 3D" that is always
post-contrast at one station, a research sequence that must never be routed) states them here and
they win over the heuristics. The file is read once at start (``load_site_rules``) and validated
completely: a bad regex or an unknown key fails at start, naming the rule, not at the first study.

    site: hospital-north
    overrides:
      - name: north-3t-bravo-is-post
        series_description: 'bravo'
        station_name: '^NORTH-MR3T$'
        role: T1CE
    ignore:
      - name: localizers
        series_description: 'loc|scout|survey'
    postoperative_patterns:   # optional: this site's phrases for a study after surgery (ingest/postoperative.py)
      - 'kontrolle nach tumor'
    confidence_floor: 0.5     # optional: a role below this confidence is not used (default in core.config)
    ambiguity_margin: 0.1     # optional: closer candidates of different protocols are ambiguous

Every pattern is a Python regular expression searched case-insensitively anywhere in the tag's value
(anchor with ^ and $ to match the whole value). All patterns a rule gives must match; a tag the series
lacks reads as the empty string. Rules are tried in file order and the first match wins; overrides are
tried before ignore rules, since an override names a role explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from neuroflow.core.config import ClassifySettings
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.roles import SeriesRole

_MATCH_FIELDS = {
    "series_description": "SeriesDescription",
    "protocol_name": "ProtocolName",
    "manufacturer": "Manufacturer",
    "station_name": "StationName",
}


class SiteRulesError(NeuroflowError):
    """The site rules file cannot be used; the message names the file and the rule."""


@dataclass(frozen=True)
class SeriesLabels:
    """The tags a site rule can match on, as text ("" when the series lacks the tag)."""

    series_description: str = ""
    protocol_name: str = ""
    manufacturer: str = ""
    station_name: str = ""


class SeriesMatch(BaseModel):
    """Regular expressions over a series' tags; all that are given must match. At least one of
    ``series_description`` and ``protocol_name`` is required: a rule on the scanner alone would catch
    every series it makes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="shown in the classification's reasons")
    series_description: str | None = None
    protocol_name: str | None = None
    manufacturer: str | None = None
    station_name: str | None = None

    @field_validator("series_description", "protocol_name", "manufacturer", "station_name")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern, re.IGNORECASE)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _names_a_series(self) -> SeriesMatch:
        if self.series_description is None and self.protocol_name is None:
            raise ValueError(f"rule '{self.name}' needs series_description or protocol_name")
        return self

    def explain(self, labels: SeriesLabels) -> str | None:
        """Why this rule matches the series ("SeriesDescription 'x' matches 'y'"), or None if it does not."""
        said: list[str] = []
        for field, tag in _MATCH_FIELDS.items():
            pattern = getattr(self, field)
            if pattern is None:
                continue
            value = getattr(labels, field)
            if not re.search(pattern, value, re.IGNORECASE):
                return None
            said.append(f"{tag} '{value}' matches '{pattern}'")
        return ", ".join(said)


class RoleOverride(SeriesMatch):
    """Series matching this rule get ``role``, whatever the heuristics say."""

    role: SeriesRole

    @field_validator("role", mode="before")
    @classmethod
    def _role_any_case(cls, value: object) -> object:
        if isinstance(value, str):
            by_name = {r.value.lower(): r for r in SeriesRole}
            return by_name.get(value.strip().lower(), value)
        return value


class IgnoreRule(SeriesMatch):
    """Series matching this rule are never pipeline inputs (role ``other``)."""


class PipelineRoute(BaseModel):
    """Which studies a pipeline takes at this site, by study-level tags (all given patterns must match,
    searched case-insensitively; a missing tag reads as ""). A study must also have the pipeline's
    required series roles; this only narrows further (e.g. only brain MR, not spine)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pipeline: str = Field(min_length=1)
    study_description: str | None = None
    modalities_in_study: str | None = None  # matched against e.g. "MR" or "CT\\MR"
    institution_name: str | None = None
    referring_physician_name: str | None = None

    @field_validator("study_description", "modalities_in_study", "institution_name", "referring_physician_name")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            re.compile(pattern)
        return pattern

    def refusal(self, study_tags: dict[str, str]) -> str | None:
        """None when the study matches; otherwise the sentence saying which tag did not."""
        for field, keyword in _ROUTE_FIELDS.items():
            pattern = getattr(self, field)
            value = str(study_tags.get(keyword, ""))
            if pattern is not None and not re.search(pattern, value, re.IGNORECASE):
                return f"site routing rule for {self.pipeline}: {keyword} {value!r} does not match {pattern!r}"
        return None


_ROUTE_FIELDS = {
    "study_description": "StudyDescription",
    "modalities_in_study": "ModalitiesInStudy",
    "institution_name": "InstitutionName",
    "referring_physician_name": "ReferringPhysicianName",
}


class SiteRules(BaseModel):
    """One site's rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str = ""
    overrides: list[RoleOverride] = Field(default_factory=list)
    ignore: list[IgnoreRule] = Field(default_factory=list)
    # Study-level routing: when given, a pipeline runs only on studies its rule accepts.
    routes: list[PipelineRoute] = Field(default_factory=list)
    # This site's confidence floor and ambiguity margin, instead of NEUROFLOW_CLASSIFY__* (core.config).
    confidence_floor: float | None = Field(default=None, ge=0.0, le=1.0)
    ambiguity_margin: float | None = Field(default=None, ge=0.0, le=1.0)
    # Regular expressions (searched case-insensitively in study and series descriptions) that mark a study after
    # surgery, beside the built-in phrases: such a glioma study goes to glioma_postop. A route rule naming
    # glioma_postop narrows it like any pipeline's; refused there, the study stays with glioma.
    postoperative_patterns: list[str] = Field(default_factory=list)

    @field_validator("postoperative_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:  # a ValueError pydantic reports with the field, as a bad file should be
                raise ValueError(f"postoperative_patterns: {pattern!r} is not a regular expression: {exc}") from None
        return patterns

    def role_policy(self, base: ClassifySettings) -> ClassifySettings:
        """``base`` (the settings) with what this site's file overrides."""
        given = {"confidence_floor": self.confidence_floor, "ambiguity_margin": self.ambiguity_margin}
        return base.model_copy(update={k: v for k, v in given.items() if v is not None})

    def route_refusal(self, pipeline: str, study_tags: dict[str, str]) -> str | None:
        """Why this site does not send the study to ``pipeline`` (None: it does, or no rule names it)."""
        rules = [r for r in self.routes if r.pipeline == pipeline]
        if not rules:
            return None
        refusals = [r.refusal(study_tags) for r in rules]
        return None if any(x is None for x in refusals) else "; ".join(x for x in refusals if x)

    def decide(self, labels: SeriesLabels) -> SiteDecision | None:
        """The role the site's rules give this series, or None when no rule matches."""
        for override in self.overrides:
            if (why := override.explain(labels)) is not None:
                return SiteDecision(override.role, override.name, why, ignored=False)
        for rule in self.ignore:
            if (why := rule.explain(labels)) is not None:
                return SiteDecision(SeriesRole.OTHER, rule.name, why, ignored=True)
        return None


@dataclass(frozen=True)
class SiteDecision:
    role: SeriesRole
    rule_name: str
    matched: str  # the sentence naming the tags and patterns that matched
    ignored: bool

    @property
    def reason(self) -> str:
        if self.ignored:
            return f"ignored by site rule '{self.rule_name}' ({self.matched})"
        return f"site rule '{self.rule_name}' assigns {self.role} ({self.matched})"


def load_site_rules(path: Path) -> SiteRules:
    """Reads and validates a site rules file. An empty file is no rules. Raises SiteRulesError naming
    the file (and the rule, where one is at fault) when the file is missing, not YAML, or invalid."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SiteRulesError(f"site rules file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SiteRulesError(f"site rules file {path} cannot be read: {exc}") from exc
    if raw is None:
        return SiteRules()
    if not isinstance(raw, dict):
        raise SiteRulesError(f"site rules file {path}: expected a mapping with 'overrides' and 'ignore'")
    try:
        return SiteRules.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(raw, error) for error in exc.errors())
        raise SiteRulesError(f"site rules file {path}: {problems}") from exc


def _describe(raw: dict[object, object], error: ErrorDetails) -> str:
    """One validation error as "overrides[2] (rule 'x').role: Input should be ..."."""
    location = [str(part) for part in error["loc"]]
    if len(location) >= 2 and location[1].isdigit():
        items, index = raw.get(location[0]), int(location[1])
        rule = ""
        if isinstance(items, list) and index < len(items) and isinstance(items[index], dict):
            rule = f" (rule '{items[index].get('name', '?')}')"
        location = [f"{location[0]}[{index}]{rule}", *location[2:]]
    return f"{'.'.join(location) or 'file'}: {error['msg']}"
