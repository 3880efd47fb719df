"""Evidence about a series' role from its header facts, each piece with a weight and a sentence.

Four sources, each a function from ``HeaderFacts`` to ``Clue``s: the names (SeriesDescription,
ProtocolName), the sequence name, the ImageType, and the sequence parameters (TR, TE, TI, flip angle,
scanning sequence, b-value). Contrast evidence is kept apart (``contrast_evidence``) because it does
not pick a role: it turns a T1 into a T1CE. Nothing here decides; ``classify`` adds the weights up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from neuroflow.core.roles import SeriesRole
from neuroflow.ingest.header_facts import HeaderFacts
from neuroflow.ingest.text_patterns import (
    DECISIVE,
    POST_CONTRAST_HINT,
    POST_CONTRAST_STRONG,
    PRE_CONTRAST,
    SEQUENCE_NAME_RULES,
    TEXT_RULES,
    TextRule,
    normalise,
)

Role = SeriesRole

# A ProtocolName is reused for every series run from one protocol entry and rarely edited, while the
# technologist edits the SeriesDescription: the description speaks louder.
_PROTOCOL_FACTOR = 0.8
# Contrast weights; a series counts as post-contrast from CONTRAST_THRESHOLD up.
_AGENT_TAG = 4.0
_OTHER_CONTRAST_TAG = 3.0
_STRONG_NAME = 2.5
_HINT_NAME = 1.5
_PRE_NAME = -5.0
CONTRAST_THRESHOLD = 2.0

_REFORMAT_IMAGE_TYPES = {
    "MPR",
    "MIP",
    "MINIP",
    "MIN IP",
    "MNIP",
    "PROJECTION IMAGE",
    "REFORMATTED",
    "CSA MPR",
    "CSAPARALLEL",
    "CSA RESAMPLED",
    "CSA 3D EDITOR",
    "VOLUME RENDER",
    "VRT",
    "SCREEN SAVE",
    "CSA MPR THICK",
}
_OTHER_DIFFUSION_IMAGE_TYPES = {"EADC", "EXP", "FA", "TENSOR", "COLFA", "TRACE_EXP"}
_PHASE_IMAGE_TYPES = {"P", "PHASE", "PHASE MAP"}
# The fields a name clue's reason starts with.
NAME_FIELDS = ("SeriesDescription", "ProtocolName")
# Enhanced MR's ComplexImageComponent other than MAGNITUDE: phase, real or imaginary part, never an input.
_NOT_MAGNITUDE_COMPONENTS = {"PHASE", "REAL", "IMAGINARY"}
# Parametric and fused maps a console derives (Siemens, GE, Philips value 3+ of ImageType on a DERIVED image):
# their pixels are not signal of an acquisition, whatever the name and parameters say.
_DERIVED_MAP_IMAGE_TYPES = {
    "T1 MAP", "T2 MAP", "T2STAR MAP", "T2_STAR_MAP", "T1MAP", "T2MAP", "R2", "R2STAR", "MAP", "PARAMETRIC",
    "PERFUSION", "CBF", "CBV", "MTT", "TTP", "RELCBF", "RELCBV", "RELMTT", "GBP", "PBP", "MOCO",
    "FUSED", "FUSION", "COLOR", "COLOUR", "RGB",
}
# PhotometricInterpretation of a colour image: a fused overlay or a colour-coded map, never an acquisition.
_COLOUR_PHOTOMETRIC = ("RGB", "YBR", "PALETTE")
_SUBTRACTION_IMAGE_TYPES = {"SUB", "SUBTRACTION"}


@dataclass(frozen=True)
class Clue:
    """One piece of evidence: ``weight`` points to ``role``; ``reason`` says why, in words."""

    role: SeriesRole
    weight: float
    reason: str


@dataclass(frozen=True)
class ContrastEvidence:
    """Whether the series was acquired after a contrast injection. ``weight`` >= CONTRAST_THRESHOLD
    means post-contrast; 0 < weight below it is a hint only (a study-level comparison may settle it);
    negative means a name says pre-contrast."""

    weight: float = 0.0
    reasons: tuple[str, ...] = ()
    tagged: bool = False  # a contrast tag (agent, route, volume) is present

    @property
    def is_post_contrast(self) -> bool:
        return self.weight >= CONTRAST_THRESHOLD

    @property
    def is_hint(self) -> bool:
        return 0 < self.weight < CONTRAST_THRESHOLD


def is_derived(facts: HeaderFacts) -> bool:
    return bool(facts.image_type) and facts.image_type[0] == "DERIVED"


def name_clues(facts: HeaderFacts, *, roles: set[SeriesRole] | None = None) -> list[Clue]:
    """Evidence from SeriesDescription and ProtocolName: per role, one clue per field naming every
    pattern that matched. Per role the names count once (the description, or 0.8 x the protocol if
    that says more), so a name repeated in both fields, or two synonyms in one, does not add up.
    ``roles`` limits the roles considered (a CT is only looked at for localizers and reformats)."""
    derived = is_derived(facts)
    description = normalise(facts.series_description)
    protocol = normalise(facts.protocol_name)
    clues: list[Clue] = []
    rules = [r for r in TEXT_RULES if roles is None or r.role in roles]
    for role in dict.fromkeys(r.role for r in rules):
        role_rules = [r for r in rules if r.role == role]
        context = f"{description} | {protocol}"
        in_description = _matches(role_rules, description, context, derived=derived)
        in_protocol = _matches(role_rules, protocol, context, derived=derived) if protocol != description else []
        description_weight = max((w for _, w in in_description), default=0.0)
        protocol_weight = _PROTOCOL_FACTOR * max((w for _, w in in_protocol), default=0.0)
        if in_description:
            clues.append(
                Clue(
                    role,
                    description_weight,
                    _matched("SeriesDescription", facts.series_description, role, in_description, derived),
                )
            )
        if in_protocol:
            extra = max(0.0, protocol_weight - description_weight)
            clues.append(
                Clue(role, extra, _matched("ProtocolName", facts.protocol_name, role, in_protocol, derived))
            )
    return clues


def _matches(rules: list[TextRule], text: str, context: str, *, derived: bool) -> list[tuple[TextRule, float]]:
    if not text:
        return []
    found = [(rule, rule.weight_for(text, derived=derived, context=context)) for rule in rules]
    return [(rule, weight) for rule, weight in found if weight > 0]


def _matched(
    field: str, raw: str, role: SeriesRole, found: list[tuple[TextRule, float]], derived: bool
) -> str:
    labels = ", ".join(f"'{rule.label}'" for rule, _ in found)
    noun = "pattern" if len(found) == 1 else "patterns"
    on_derived = " on a DERIVED image" if derived and any(r.derived_weight for r, _ in found) else ""
    return f"{field} '{raw}' matches {role} {noun} {labels}{on_derived}"


def sequence_name_clues(facts: HeaderFacts) -> list[Clue]:
    """Evidence from the vendor's sequence name ("*tfl3d1_16ns" is an MPRAGE, "*swi3d1r" an SWI)."""
    name = facts.sequence_name.lower()
    return [
        Clue(
            rule.role,
            weight,
            f"SequenceName '{facts.sequence_name}' is a {rule.label} sequence ({rule.role})",
        )
        for rule in SEQUENCE_NAME_RULES
        if name and (weight := rule.weight_for(name, derived=False)) > 0
    ]


def image_type_clues(facts: HeaderFacts) -> list[Clue]:
    """Evidence from ImageType: localizers, reformats and projections, ADC and trace maps, SWI,
    phase and subtraction images, derived parametric maps; and from the two tags that say the same where
    ImageType does not: ComplexImageComponent (enhanced MR phase) and PhotometricInterpretation (colour)."""
    clues: list[Clue] = []
    if facts.complex_image_component in _NOT_MAGNITUDE_COMPONENTS:
        clues.append(Clue(Role.OTHER, DECISIVE, f"ComplexImageComponent {facts.complex_image_component}: "
                                                "not a magnitude image, never a pipeline input"))
    if facts.photometric_interpretation.startswith(_COLOUR_PHOTOMETRIC):
        clues.append(Clue(Role.OTHER, DECISIVE, f"PhotometricInterpretation {facts.photometric_interpretation}: "
                                                "a colour image (fused overlay or colour map), not an acquisition"))
    values = set(facts.image_type)
    if not values:
        return clues
    shown = "ImageType '" + "\\".join(facts.image_type) + "'"
    if "LOCALIZER" in values:
        clues.append(Clue(Role.OTHER, DECISIVE, f"{shown} marks a localizer"))
    if reformat := sorted(values & _REFORMAT_IMAGE_TYPES):
        clues.append(
            Clue(
                Role.OTHER,
                DECISIVE,
                f"{shown} names a reformat/projection ({', '.join(reformat)}), not an acquisition",
            )
        )
    if "ADC" in values:
        clues.append(Clue(Role.ADC, 4.0, f"{shown} contains ADC: apparent diffusion coefficient map"))
    if other := sorted(values & _OTHER_DIFFUSION_IMAGE_TYPES):
        clues.append(Clue(Role.OTHER, 5.0, f"{shown} names a derived diffusion map ({', '.join(other)})"))
    if values & {"TRACEW", "TRACE", "ISOTROPIC"}:
        clues.append(Clue(Role.DWI, 2.0, f"{shown} marks a diffusion trace image"))
    elif "DIFFUSION" in values and "ADC" not in values:
        clues.append(Clue(Role.DWI, 1.0, f"{shown} marks a diffusion image"))
    if "SWI" in values:
        clues.append(Clue(Role.SWI, 2.0, f"{shown} marks a susceptibility-weighted image"))
    if values & _PHASE_IMAGE_TYPES or any(v.startswith(("P_", "PHASE")) for v in values):
        clues.append(Clue(Role.OTHER, DECISIVE, f"{shown} marks a phase image: never a pipeline input"))
    if is_derived(facts) and (maps := sorted(values & _DERIVED_MAP_IMAGE_TYPES)):
        clues.append(Clue(Role.OTHER, DECISIVE, f"{shown} names a derived map ({', '.join(maps)}): not an acquisition"))
    if values & _SUBTRACTION_IMAGE_TYPES:
        clues.append(Clue(Role.OTHER, 4.0, f"{shown} marks a subtraction image"))
    return clues


def parameter_clues(facts: HeaderFacts) -> list[Clue]:
    """Evidence from the MR sequence parameters. The thresholds are the textbook weightings at 1.5 and
    3 T; every clue names the values it used."""
    tr, te, ti, flip = (
        facts.repetition_time_ms,
        facts.echo_time_ms,
        facts.inversion_time_ms,
        facts.flip_angle_deg,
    )
    gr, ep = facts.is_gradient_echo, facts.is_echo_planar
    seq = "ScanningSequence " + "\\".join(facts.scanning_sequence) + ", " if facts.scanning_sequence else ""
    clues: list[Clue] = []
    prepared_t1 = ti is not None and 300 <= ti <= 1300 and te is not None and te < 30
    if ti is not None and ti > 1500 and te is not None and te > 60:
        clues.append(
            Clue(
                Role.FLAIR,
                3.0,
                f"{seq}InversionTime {_n(ti)} ms with TE {_n(te)} ms: fluid-attenuated inversion recovery",
            )
        )
    elif ti is not None and ti > 1500 and te is None and tr is not None and tr > 6000:
        clues.append(
            Clue(
                Role.FLAIR,
                2.0,
                f"{seq}InversionTime {_n(ti)} ms with TR {_n(tr)} ms (no TE): "
                "fluid-attenuated inversion recovery",
            )
        )
    if prepared_t1 and ti is not None and te is not None:
        clues.append(
            Clue(
                Role.T1,
                2.5,
                f"{seq}InversionTime {_n(ti)} ms with TE {_n(te)} ms: inversion-prepared T1 "
                "(MPRAGE/BRAVO/T1-FLAIR type), not FLAIR",
            )
        )
    if (
        not gr
        and not ep
        and tr is not None
        and te is not None
        and tr < 1000
        and te < 20
        and (ti is None or ti < 300)
    ):
        clues.append(Clue(Role.T1, 2.0, f"{seq}TR {_n(tr)} ms, TE {_n(te)} ms: short TR and TE, T1-weighted"))
    if gr and not ep and te is not None and te < 5 and not prepared_t1:
        prepared = "MP" in facts.sequence_variant
        what = "magnetisation-prepared (SequenceVariant MP)" if prepared else "spoiled"
        clues.append(
            Clue(
                Role.T1,
                2.0 if prepared else 1.5,
                f"{seq}gradient echo with TE {_n(te)} ms: T1-weighted {what} gradient echo",
            )
        )
    if (
        not gr
        and not ep
        and tr is not None
        and te is not None
        and tr > 2000
        and te > 60
        and (ti is None or ti < 300)
    ):
        clues.append(
            Clue(Role.T2, 2.0, f"{seq}TR {_n(tr)} ms, TE {_n(te)} ms without long inversion: T2-weighted")
        )
    if (
        "SE" in facts.scanning_sequence
        and not ep
        and ti is None
        and tr is not None
        and te is not None
        and tr > 2000
        and te < 35
    ):
        clues.append(Clue(Role.OTHER, 1.5, f"{seq}TR {_n(tr)} ms, TE {_n(te)} ms: proton-density weighting"))
    if facts.b_values and max(facts.b_values) > 0:
        b = ", ".join(_n(v) for v in facts.b_values)
        readout = " with echo-planar readout" if ep else ""
        if is_derived(facts):  # ADC, FA and exponential ADC maps keep the b-values they were computed from
            clues.append(Clue(Role.DWI, 1.0, f"{seq}b-value {b} s/mm² on a DERIVED image: computed from diffusion"))
        else:
            clues.append(Clue(Role.DWI, 3.0 if ep else 2.0, f"{seq}b-value {b} s/mm²{readout}: diffusion-weighted"))
    if gr and not ep and te is not None and te > 15 and (flip is None or flip <= 35):
        angle = f" and flip angle {_n(flip)}°" if flip is not None else ""
        clues.append(
            Clue(
                Role.SWI, 2.5, f"{seq}gradient echo with TE {_n(te)} ms{angle}: T2*/susceptibility weighting"
            )
        )
    return clues


def contrast_evidence(facts: HeaderFacts) -> ContrastEvidence:
    """Contrast tags and contrast words in the names. The description is read first and, when it says
    anything about contrast, the protocol name is not (protocol names are reused for pre and post).
    A name saying pre-contrast outweighs a contrast tag: scanners copy the agent to every series of
    the exam once the technologist has entered it, so the tag can be on a series taken before."""
    weight, reasons = 0.0, []
    tagged = False
    if facts.contrast_agent:
        weight, tagged = _AGENT_TAG, True
        reasons.append(f"ContrastBolusAgent '{facts.contrast_agent}' present: post-contrast")
    elif facts.contrast_route or facts.contrast_volume_ml is not None:
        weight, tagged = _OTHER_CONTRAST_TAG, True
        present = [f"ContrastBolusRoute '{facts.contrast_route}'"] if facts.contrast_route else []
        if facts.contrast_volume_ml is not None:
            present.append(f"ContrastBolusVolume {_n(facts.contrast_volume_ml)} mL")
        reasons.append(f"{' and '.join(present)} present: post-contrast")
    for field, raw in (
        ("SeriesDescription", facts.series_description),
        ("ProtocolName", facts.protocol_name),
    ):
        text = normalise(raw)
        if pre := PRE_CONTRAST.search(text):
            outweighs = (
                "; this outweighs the contrast tag, which scanners copy to every later series"
                if tagged
                else ""
            )
            reasons.append(
                f"{field} '{raw}' says pre-contrast ('{pre.group()}'): not post-contrast{outweighs}"
            )
            weight += _PRE_NAME
        elif strong := POST_CONTRAST_STRONG.search(text):
            reasons.append(f"{field} '{raw}' marks post-contrast ('{strong.group()}')")
            weight += _STRONG_NAME
        elif POST_CONTRAST_HINT.search(text):
            reasons.append(
                f"{field} '{raw}' has a 'post' hint (alone not enough: 'post' also means "
                "post-operative or posterior)"
            )
            weight += _HINT_NAME
        else:
            continue
        break
    return ContrastEvidence(weight, tuple(reasons), tagged)


def unmatched_names(facts: HeaderFacts) -> str:
    """The sentence for names that were there and matched no pattern ("" when the series has none)."""
    names = [f"SeriesDescription '{facts.series_description}'"] if facts.series_description else []
    if facts.protocol_name and normalise(facts.protocol_name) != normalise(facts.series_description):
        names.append(f"ProtocolName '{facts.protocol_name}'")
    if not names:
        return ""
    return f"{' and '.join(names)} {'match' if len(names) > 1 else 'matches'} no known sequence pattern"


def seen_without_evidence(facts: HeaderFacts, clues: list[Clue]) -> str:
    """What the header held when nothing in it pointed to a role: every name, the sequence name and the
    sequence parameters, each said as seen (or said to be missing), so a person can write a site rule."""
    said = [c.reason for c in clues]
    names = unmatched_names(facts) if not any(c.reason.startswith(NAME_FIELDS) for c in clues) else ""
    if names:
        said.append(names)
    elif not facts.series_description and not facts.protocol_name:
        said.append("no SeriesDescription or ProtocolName")
    if facts.sequence_name and not any(c.reason.startswith("SequenceName") for c in clues):
        said.append(f"SequenceName '{facts.sequence_name}' is no known sequence")
    said.append(_parameters_seen(facts))
    return "; ".join(said)


def _parameters_seen(facts: HeaderFacts) -> str:
    values = [
        f"{label} {_n(value)}{unit}"
        for label, value, unit in (
            ("TR", facts.repetition_time_ms, " ms"),
            ("TE", facts.echo_time_ms, " ms"),
            ("TI", facts.inversion_time_ms, " ms"),
            ("flip angle", facts.flip_angle_deg, "°"),
        )
        if value is not None
    ]
    seq = "ScanningSequence " + "\\".join(facts.scanning_sequence) if facts.scanning_sequence else ""
    if not values:
        return f"{seq}{' but ' if seq else ''}no TR, TE or TI to judge the weighting by"
    return f"{seq + ', ' if seq else ''}{', '.join(values)}: fits no role's weighting"


def acquisition_dimension(facts: HeaderFacts) -> tuple[bool, str]:
    """Whether the series is a 3D volume, and the sentence saying how that was decided: MRAcquisitionType
    when present, otherwise thin contiguous slices (<= 1.5 mm, 60 or more) count as a volume."""
    thickness = facts.slice_thickness_mm
    slices = f", {facts.instance_count} slices" if facts.instance_count else ""
    of = f" of {_n(thickness)} mm" if thickness is not None else ""
    if facts.mr_acquisition_type in ("2D", "3D"):
        kind = facts.mr_acquisition_type
        return kind == "3D", f"{kind} acquisition (MRAcquisitionType {kind}{slices}{of})"
    if thickness is not None and thickness <= 1.5 and facts.instance_count >= 60:
        return True, f"no MRAcquisitionType; {facts.instance_count} slices of {_n(thickness)} mm: a 3D volume"
    if thickness is not None:
        return False, f"no MRAcquisitionType; slices of {_n(thickness)} mm{slices}: 2D"
    return False, "neither MRAcquisitionType nor SliceThickness: taken as 2D"


def _n(value: float) -> str:
    """A number as a person writes it: 2500, 2.32, 0.5."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return re.sub(r"^-0$", "0", text)
