"""Routing's first step: which series is which (T1, T1CE, T2, FLAIR, ADC, DWI, SWI, CT, other).

Each series is judged from its header alone (``classify_series``): evidence from the names, the
sequence name, the ImageType and the sequence parameters is added up per role (``evidence``), the
strongest role wins, contrast evidence turns a T1 into a T1CE, and every piece of evidence leaves a
sentence in ``reasons``. Site rules (``site_rules``) override the heuristics and say so. A role whose
confidence is under the floor (``ClassifySettings.confidence_floor``, the site's rules may override it) is
kept for the record, marked "below floor", and never used. A study is then looked at as a whole
(``classify_study``): a T1 pair where only one has contrast evidence is settled, and two series with equal
claim to one role are both kept, marked ambiguous. ``select_inputs`` picks the best series per role a
pipeline needs (the order is in its docstring), or refuses: ``MissingSequence`` listing what the study has,
``AmbiguousRole`` naming the candidates when two different protocols are too close to call.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from pydicom.dataset import Dataset

from neuroflow.core.config import ClassifySettings
from neuroflow.core.dicom_io import SeriesInstances
from neuroflow.core.dwi_volumes import ADC_LABEL
from neuroflow.core.errors import AmbiguousRole, MissingSequence
from neuroflow.core.identity import uid_key
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sub_series import parse_sub_series_uid
from neuroflow.ingest.evidence import (
    NAME_FIELDS,
    Clue,
    ContrastEvidence,
    acquisition_dimension,
    contrast_evidence,
    image_type_clues,
    name_clues,
    parameter_clues,
    seen_without_evidence,
    sequence_name_clues,
    unmatched_names,
)
from neuroflow.ingest.header_facts import HeaderFacts, read_facts
from neuroflow.ingest.series_volumes import volumes_of
from neuroflow.ingest.site_rules import SeriesLabels, SiteRules
from neuroflow.ingest.text_patterns import normalise

# A series given as its representative header and its number of instances, or as found in a source.
SeriesInput = SeriesInstances | tuple[Dataset, int]

_ROUTED_MODALITIES = {"MR", "CT", ""}
_CT_EVIDENCE = 5.0  # the modality decides a CT, unless a localizer or reformat marker (10) outweighs it
_NO_EVIDENCE_CONFIDENCE = 0.05
_AMBIGUITY_FACTOR = 0.7
_HINT_PROMOTION_FACTOR = 0.85  # a T1CE decided by a "post" hint and the study, without a tag
_TEXT_ONLY_CONTRAST_FACTOR = 0.95  # a T1CE decided by its name, without a tag


@dataclass(frozen=True)
class SeriesClassification:
    """The role routing gives one series, how sure it is (0..1), and why, in sentences (the first is
    the main reason). ``score`` is the evidence summed for the role: it compares candidates for one
    role. ``acquired_at`` ("YYYYMMDD HHMMSS.ffffff" or "") orders series in time. ``below_floor``: the
    confidence is under the floor, so the series is never used for ``role``. ``facts``: the header facts
    the verdict came from (``select_inputs`` tells a repeat of one protocol from a different protocol).
    ``own_confidence``: the confidence before the study-level discount for equal evidence (None when not
    discounted): the discount is about which series to take, so candidates are compared without it."""

    series_instance_uid: str
    series_number: int | None
    description: str
    role: SeriesRole
    confidence: float
    reasons: tuple[str, ...]
    is_3d: bool
    instance_count: int = 0
    acquired_at: str = ""
    score: float = 0.0
    by_site_rule: bool = False
    below_floor: bool = False
    own_confidence: float | None = None
    facts: HeaderFacts | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.confidence <= 1.0:
            raise ValueError(f"confidence {self.confidence} is outside 0..1")

    @property
    def main_reason(self) -> str:
        return self.reasons[0] if self.reasons else ""

    @property
    def is_ambiguous(self) -> bool:
        return any(r.startswith("ambiguous:") for r in self.reasons)

    def label(self) -> str:
        """How a person finds the series on the scanner: "series 5 'AX T1 POST'"."""
        number = (f"series {self.series_number}" if self.series_number is not None
                  else f"series (key {uid_key(self.series_instance_uid)})")
        return f"{number} '{self.description or '(no description)'}'"


@dataclass(frozen=True)
class _Assessed:
    """A classification with what the study-level step needs to compare series."""

    classification: SeriesClassification
    facts: HeaderFacts
    contrast: ContrastEvidence = field(default_factory=ContrastEvidence)


def effective_policy(settings: ClassifySettings | None = None, rules: SiteRules | None = None) -> ClassifySettings:
    """The confidence floor and ambiguity margin in force: the settings, with what the site's rules override."""
    base = settings if settings is not None else ClassifySettings()
    return rules.role_policy(base) if rules is not None else base


def classify_series(
    series: SeriesInput | Dataset,
    instance_count: int | None = None,
    *,
    rules: SiteRules | None = None,
    policy: ClassifySettings | None = None,
) -> SeriesClassification:
    """One series on its own: a header-only Dataset (its first instance) with ``instance_count``, or a
    ``SeriesInstances``. Never raises on a header; a series nothing can be said about is ``other`` with
    a low confidence and a reason saying what the header held."""
    floor = effective_policy(policy, rules).confidence_floor
    return _with_floor(_assess(_facts_of(series, instance_count), rules).classification, floor)


def classify_study(
    series: Sequence[SeriesInput], *, rules: SiteRules | None = None, policy: ClassifySettings | None = None
) -> list[SeriesClassification]:
    """Every series of one study, in series-number order, after the study-level checks:

    * of two or more T1 series (and no T1CE), when exactly one has contrast evidence (a tag, a name,
      or only a "post" hint), it becomes the T1CE; acquired after an otherwise identical T1 is noted.
    * a role under the confidence floor is marked "below floor" (checked before the next step: the
      discount for equal evidence is about which series to take, not whether the role is right);
    * two series of one role with equal score are both kept, their confidence lowered and an
      "ambiguous: ..." reason added; ``select_inputs`` breaks the tie or refuses.
    Series decided by a site rule are left as the rule says."""
    floor = effective_policy(policy, rules).confidence_floor
    assessed = [a for s in series for a in _assess_volumes(s, rules)]
    assessed = _settle_contrast_pair(assessed)
    classified = _flag_ambiguous([_with_floor(a.classification, floor) for a in assessed])
    return sorted(_computed_adc_unused_beside_scanner_adc(classified), key=_number_order)


def select_inputs(
    classifications: Iterable[SeriesClassification],
    required_roles: Iterable[SeriesRole],
    *,
    study_key: str = "",
    policy: ClassifySettings | None = None,
    at_least_one_of: Iterable[SeriesRole] = (),
) -> dict[SeriesRole, SeriesClassification]:
    """The best series per required role; a series below the confidence floor is never a candidate. With
    ``at_least_one_of`` (a model that takes a subset of its inputs: core/sequence_subsets.py), a required
    role without a series is left out of the answer, and only a study with none of those roles is refused.
    When several qualify, the order is:

    1. confidence (the series' own, before the study's discount for equal evidence): a candidate more than
       the ambiguity margin below the most confident one is out;
    2. 3D over 2D among those left (the pipelines resample to 1 mm; a 3D volume loses nothing);
    3. those left must be one protocol (the same sequence parameters: a repeat, or the same sequence in
       another plane). Different protocols this close are too close to call: ``AmbiguousRole``, naming them;
    4. higher confidence, then finer resolution (smaller voxel), then more slices (a repeat stopped early
       has fewer), then the latest acquisition and series number (a repeat is taken because the first was
       spoiled; for T1CE the later series has the contrast well distributed).

    Raises MissingSequence naming every missing role and listing what the study has, with descriptions,
    when a role has no series above the floor; then AmbiguousRole for every role too close to call."""
    margin = (policy if policy is not None else ClassifySettings()).ambiguity_margin
    classified = list(classifications)
    required = list(dict.fromkeys(required_roles))
    chosen: dict[SeriesRole, SeriesClassification] = {}
    rivals: dict[SeriesRole, list[SeriesClassification]] = {}
    for role in required:
        candidates = [c for c in classified if c.role == role and not c.below_floor]
        if candidates:
            chosen[role], rivals[role] = _best_candidate(candidates, margin)
    missing = [role for role in required if role not in chosen]
    any_of = list(dict.fromkeys(at_least_one_of))
    if any_of and any(role in chosen for role in any_of):
        missing = []  # the others are optional: the model takes the study without them
    if missing:
        needed = (", ".join(required) if not any_of else
                  f"at least one of {', '.join(any_of)}; used when present: {', '.join(required)}")
        raise MissingSequence(study_key, _missing_reason(any_of or missing, needed, classified), stage="classify")
    if ambiguous := {role: [chosen[role], *others] for role, others in rivals.items() if others}:
        raise AmbiguousRole(study_key, _ambiguity_reason(ambiguous, margin), stage="classify")
    return chosen


def format_table(classifications: Iterable[SeriesClassification]) -> str:
    """A plain-text table, one series a line: number, description, role, confidence, 2D/3D and the
    main reason (with "[ambiguous]" / "[below floor]" / "[site rule]" where that applies)."""
    rows = [("#", "Description", "Role", "Conf", "Acq", "Main reason")]
    for c in classifications:
        notes = (
            (" [ambiguous]" if c.is_ambiguous else "")
            + (" [below floor]" if c.below_floor else "")
            + (" [site rule]" if c.by_site_rule else "")
        )
        rows.append(
            (
                "" if c.series_number is None else str(c.series_number),
                _shorten(c.description or "(no description)", 36),
                str(c.role),
                f"{c.confidence:.2f}",
                "3D" if c.is_3d else "2D",
                _shorten(c.main_reason, 110) + notes,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [
            row[0].rjust(widths[0]),
            *(cell.ljust(w) for cell, w in zip(row[1:-1], widths[1:], strict=True)),
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


# --- one series -------------------------------------------------------------------------------------


def _facts_of(series: SeriesInput | Dataset, instance_count: int | None = None) -> HeaderFacts:
    if isinstance(series, SeriesInstances):
        if not series.headers:
            return HeaderFacts(series_instance_uid=series.series_instance_uid)
        first = min(series.headers, key=_instance_number)
        facts = read_facts(first, len(series.headers), others=series.headers)
        return facts if facts.series_instance_uid else replace(facts, series_instance_uid=series.series_instance_uid)
    if isinstance(series, Dataset):
        return read_facts(series, instance_count if instance_count is not None else 1)
    header, count = series
    return read_facts(header, count)


def _assess_volumes(series: SeriesInput, rules: SiteRules | None) -> list[_Assessed]:
    """A series on its own, or each of its volumes on its own when it holds several (echoes, time
    points, stacks, diffusion b-values: ``series_volumes``), described as "<description> [<volume>]"."""
    if not isinstance(series, SeriesInstances):
        return [_assess(_facts_of(series), rules)]
    out: list[_Assessed] = []
    for volume in volumes_of(series):
        assessed = _assess(volume.facts, rules)
        if volume.label:
            c = assessed.classification
            note = f"volume {volume.label} of a series that holds several: {volume.description}"
            shown = "ADC computed" if volume.computed_adc else volume.label
            reasons = (*c.reasons[:1], note, *c.reasons[1:])
            assessed = replace(assessed, classification=replace(
                c, description=f"{volume.series_description} [{shown}]", reasons=reasons))
        out.append(assessed)
    return out


def _computed_adc_unused_beside_scanner_adc(classified: list[SeriesClassification]) -> list[SeriesClassification]:
    """An ADC neuroflow computed from a DWI series is for studies whose scanner sent none: beside a
    scanner's ADC series it stays listed but is not an ADC candidate."""
    scanner = [c for c in classified if c.role == SeriesRole.ADC and parse_sub_series_uid(c.series_instance_uid)[1]
               != ADC_LABEL]
    if not scanner:
        return classified
    return [
        replace(c, role=SeriesRole.OTHER, reasons=(
            f"computed ADC not used: the scanner sent an ADC ({scanner[0].label()})", *c.reasons))
        if c.role == SeriesRole.ADC and parse_sub_series_uid(c.series_instance_uid)[1] == ADC_LABEL else c
        for c in classified
    ]


def _instance_number(ds: Dataset) -> float:
    try:
        return float(ds.get("InstanceNumber"))
    except Exception:  # missing or junk: keep the source order for those
        return math.inf


def _assess(facts: HeaderFacts, rules: SiteRules | None) -> _Assessed:
    heuristic = _heuristic(facts)
    if rules is None:
        return heuristic
    labels = SeriesLabels(facts.series_description, facts.protocol_name, facts.manufacturer, facts.station_name)
    decision = rules.decide(labels)
    if decision is None:
        return heuristic
    verdict = heuristic.classification
    if verdict.role == decision.role:
        stance = f"; the heuristics agree ({verdict.role}, {verdict.confidence:.2f})"
    else:
        stance = f"; overrides the heuristic verdict {verdict.role} ({verdict.confidence:.2f})"
    reasons = (decision.reason + stance, *(f"heuristic: {r}" for r in verdict.reasons))
    return replace(
        heuristic,
        classification=replace(verdict, role=decision.role, confidence=1.0, reasons=reasons, by_site_rule=True),
    )


def _heuristic(facts: HeaderFacts) -> _Assessed:
    is_3d, dimension = acquisition_dimension(facts)

    def result(
        role: SeriesRole,
        confidence: float,
        reasons: Sequence[str],
        score: float = 0.0,
        contrast: ContrastEvidence | None = None,
    ) -> _Assessed:
        classification = SeriesClassification(
            series_instance_uid=facts.series_instance_uid,
            series_number=facts.series_number,
            description=facts.series_description,
            role=role,
            confidence=round(min(1.0, max(0.0, confidence)), 2),
            reasons=tuple(reasons),
            is_3d=is_3d,
            instance_count=facts.instance_count,
            acquired_at=facts.acquired_at,
            score=round(score, 2),
            facts=facts,
        )
        return _Assessed(classification, facts, contrast or ContrastEvidence())

    if facts.modality not in _ROUTED_MODALITIES:
        return result(SeriesRole.OTHER, 0.99, [f"Modality {facts.modality}: not an MR or CT image series"])
    clues, contrast, notes = _gather(facts)
    scores: dict[SeriesRole, float] = defaultdict(float)
    for clue in clues:
        scores[clue.role] += clue.weight
    ranked = sorted(
        ((s, role) for role, s in scores.items() if s > 0),
        key=lambda x: (-x[0], list(SeriesRole).index(x[1])),
    )
    if not ranked:
        said = seen_without_evidence(facts, clues)
        return result(
            SeriesRole.OTHER,
            _NO_EVIDENCE_CONFIDENCE,
            [f"no evidence for any role ({said})", *notes, dimension],
        )
    best, winner = ranked[0]
    runner_up = ranked[1][0] if len(ranked) > 1 else 0.0
    confidence = (1 - math.exp(-best / 3)) * (0.5 + 0.5 * (best - runner_up) / best)

    role, score = winner, best
    reasons = [c.reason for c in sorted((c for c in clues if c.role == winner), key=lambda c: -c.weight)]
    if winner == SeriesRole.T1 and contrast.is_post_contrast:
        role, score = SeriesRole.T1CE, best + contrast.weight
        confidence *= 1.0 if contrast.tagged and contrast.weight >= 4 else _TEXT_ONLY_CONTRAST_FACTOR
        reasons = [*contrast.reasons, *reasons]
    elif winner == SeriesRole.T1:
        reasons.extend(contrast.reasons)  # why it is not a T1CE (a "pre", or only a hint)
    elif contrast.weight > 0:
        reasons.extend(f"{r} (noted; only a T1 becomes a T1CE)" for r in contrast.reasons)
    if facts.modality != "CT" and not any(c.reason.startswith(NAME_FIELDS) for c in clues):
        notes.append(unmatched_names(facts))  # the names were there and said nothing: say so
    reasons.extend([*(n for n in notes if n), dimension])
    for other_score, other in ranked[1:]:
        strongest = max((c for c in clues if c.role == other), key=lambda c: c.weight)
        reasons.append(f"also {other}-like (score {other_score:.1f}): {strongest.reason}")
    reasons.append("scores: " + ", ".join(f"{r} {s:.1f}" for s, r in ranked))
    return result(role, confidence, reasons, score, contrast)


def _gather(facts: HeaderFacts) -> tuple[list[Clue], ContrastEvidence, list[str]]:
    """All evidence for an MR or CT series: role clues, contrast evidence, and notes for the reasons.
    A CT is a CT unless it is a localizer or a reformat, so only the ``other`` evidence is read for it."""
    if facts.modality == "CT":
        other = [*name_clues(facts, roles={SeriesRole.OTHER}), *image_type_clues(facts)]
        ct = Clue(SeriesRole.CT, _CT_EVIDENCE, "Modality CT")
        return [ct, *(c for c in other if c.role == SeriesRole.OTHER)], ContrastEvidence(), []
    notes = [] if facts.modality else ["Modality missing: read as MR"]
    clues = [*name_clues(facts), *sequence_name_clues(facts), *image_type_clues(facts), *parameter_clues(facts)]
    return clues, contrast_evidence(facts), notes


def _with_floor(c: SeriesClassification, floor: float) -> SeriesClassification:
    """``c`` marked below floor, with the reason first, when its role is one a pipeline could use and the
    heuristics are less sure of it than ``floor`` (a site rule's verdict is the site's, never below)."""
    if c.role == SeriesRole.OTHER or c.by_site_rule or c.confidence >= floor:
        return c
    reason = (
        f"below floor: {c.role} at confidence {c.confidence:.2f} (score {c.score:.1f}) is under the confidence "
        f"floor {floor:.2f}: not used as the {c.role} input"
    )
    return replace(c, below_floor=True, reasons=(reason, *c.reasons))


# --- the study ---------------------------------------------------------------------------------------


def _settle_contrast_pair(assessed: list[_Assessed]) -> list[_Assessed]:
    roles = [a.classification.role for a in assessed]
    if SeriesRole.T1CE in roles:
        return assessed
    t1s = [a for a in assessed if a.classification.role == SeriesRole.T1 and not a.classification.by_site_rule]
    with_evidence = [a for a in t1s if a.contrast.weight > 0]
    if len(t1s) < 2 or len(with_evidence) != 1:
        return assessed
    post = with_evidence[0]
    was = post.classification
    reason = (
        f"study: the only one of {len(t1s)} T1 series with contrast evidence "
        f"({'; '.join(post.contrast.reasons)}): taken as T1CE"
    )
    factor = 1.0 if post.contrast.tagged else _HINT_PROMOTION_FACTOR
    before = [
        a
        for a in t1s
        if a is not post and _time_order(a.classification) < _time_order(was) and _same_parameters(a.facts, post.facts)
    ]
    if before:
        reason += f"; acquired after {before[-1].classification.label()} with identical parameters"
        factor = 1.0
    promoted = replace(
        was,
        role=SeriesRole.T1CE,
        confidence=round(was.confidence * factor, 2),
        reasons=(reason, *was.reasons),
        score=round(was.score + post.contrast.weight, 2),
    )
    return [replace(a, classification=promoted) if a is post else a for a in assessed]


def _same_parameters(a: HeaderFacts, b: HeaderFacts) -> bool:
    """Same sequence, as far as the header tells: TR and TE present and equal, and TI, flip angle,
    2D/3D and sequence name equal (both absent counts as equal)."""
    if a.repetition_time_ms is None or a.echo_time_ms is None:
        return False

    def close(x: float | None, y: float | None) -> bool:
        return (x is None and y is None) or (x is not None and y is not None and abs(x - y) <= 0.01 * max(x, y, 1.0))

    return (
        close(a.repetition_time_ms, b.repetition_time_ms)
        and close(a.echo_time_ms, b.echo_time_ms)
        and close(a.inversion_time_ms, b.inversion_time_ms)
        and close(a.flip_angle_deg, b.flip_angle_deg)
        and a.mr_acquisition_type == b.mr_acquisition_type
        and a.sequence_name == b.sequence_name
    )


def _flag_ambiguous(classified: list[SeriesClassification]) -> list[SeriesClassification]:
    by_claim: dict[tuple[SeriesRole, float], list[int]] = defaultdict(list)
    for index, c in enumerate(classified):
        if c.role != SeriesRole.OTHER and not c.by_site_rule and not c.below_floor:
            by_claim[(c.role, c.score)].append(index)
    out = list(classified)
    for (role, score), tied in by_claim.items():
        if len(tied) < 2:
            continue
        names = " and ".join(c.label() for c in sorted((classified[i] for i in tied), key=_number_order))
        reason = (
            f"ambiguous: {names} are each {role} with equal evidence (score {score:.1f}); "
            "select_inputs takes 3D over 2D, a repeat of one protocol by resolution, slices, then the later one"
        )
        for i in tied:
            c = classified[i]
            out[i] = replace(
                c,
                confidence=round(c.confidence * _AMBIGUITY_FACTOR, 2),
                own_confidence=c.confidence,
                reasons=(*c.reasons[:1], reason, *c.reasons[1:]),
            )
    return out


def _number_order(c: SeriesClassification) -> tuple[bool, int, str, str]:
    # The series UID without the volume: a series' volumes keep the order they were listed in.
    series_uid, _ = parse_sub_series_uid(c.series_instance_uid)
    return (c.series_number is None, c.series_number or 0, c.acquired_at, series_uid)


def _time_order(c: SeriesClassification) -> tuple[str, int]:
    return (c.acquired_at, c.series_number if c.series_number is not None else -1)


def _best_candidate(
    candidates: list[SeriesClassification], margin: float
) -> tuple[SeriesClassification, list[SeriesClassification]]:
    """The winner by ``select_inputs``' order, and the candidates of other protocols too close to it to call."""
    top = max(_own_confidence(c) for c in candidates)
    close = [c for c in candidates if _own_confidence(c) >= top - margin - 1e-9]
    if any(c.is_3d for c in close):
        close = [c for c in close if c.is_3d]
    winner = max(close, key=lambda c: (_own_confidence(c), -_voxel_mm3(c), c.instance_count, _time_order(c)))
    others = [c for c in close if c is not winner and not _same_protocol(c, winner)]
    return winner, sorted(others, key=_number_order)


def _own_confidence(c: SeriesClassification) -> float:
    return c.own_confidence if c.own_confidence is not None else c.confidence


def _same_protocol(a: SeriesClassification, b: SeriesClassification) -> bool:
    """One protocol run twice (or in another plane): the same sequence parameters when both have TR and TE,
    otherwise the same names."""
    if a.facts is not None and b.facts is not None and _same_parameters(a.facts, b.facts):
        return True
    with_timing = [f for f in (a.facts, b.facts) if f is not None and f.repetition_time_ms and f.echo_time_ms]
    if len(with_timing) == 2:
        return False  # both say what they are, and it differs
    protocols = [normalise(c.facts.protocol_name) if c.facts is not None else "" for c in (a, b)]
    return normalise(a.description) == normalise(b.description) and protocols[0] == protocols[1]


def _voxel_mm3(c: SeriesClassification) -> float:
    """The voxel volume the header states (infinite when it does not say: unknown is not finer)."""
    facts = c.facts
    if facts is None or facts.pixel_spacing_mm is None or facts.slice_thickness_mm is None:
        return math.inf
    return facts.pixel_spacing_mm[0] * facts.pixel_spacing_mm[1] * facts.slice_thickness_mm


def _ambiguity_reason(ambiguous: dict[SeriesRole, list[SeriesClassification]], margin: float) -> str:
    said = []
    for role, candidates in ambiguous.items():
        named = " and ".join(
            f"{c.label()} ({_own_confidence(c):.2f}, {'3D' if c.is_3d else '2D'})"
            for c in sorted(candidates, key=_number_order)
        )
        said.append(f"{role}: {named} are different protocols within {margin:.2f} confidence of each other")
    return (
        f"ambiguous {' and '.join(str(r) for r in ambiguous)} input, not guessed: {'; '.join(said)}. Remove the "
        "unwanted series from the study, or name it in a site rule (ignore, or an override; see "
        "deploy/site-rules.example.yaml)"
    )


def _missing_reason(missing: list[SeriesRole], required: str, found: list[SeriesClassification]) -> str:
    listing = "; ".join(
        f"{c.label()} = {c.role} ({c.confidence:.2f}{', below floor' if c.below_floor else ''})"
        for c in sorted(found, key=_number_order)
    )
    return (
        f"no {' or '.join(missing)} series found (required: {required}); the study has: "
        f"{listing or 'no series'}. If one of these is the missing sequence under a local name, add a site "
        "rule (see deploy/site-rules.example.yaml)"
    )


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
