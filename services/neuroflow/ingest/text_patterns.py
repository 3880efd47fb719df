"""What series names say: normalisation of free text and the patterns vendors and sites use.

Series descriptions are typed by technologists and protocol authors in every vendor's idiom and
several languages, so the text is normalised first (case, accents, separators, Philips one-letter
prefixes) and then searched for patterns. Each pattern is evidence with a weight, never a verdict:
the classifier adds it to what the sequence parameters say.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from neuroflow.core.roles import SeriesRole

Role = SeriesRole

# Philips prefixes one lower-case letter to an upper-case name: "sT1W" (SENSE), "dADC" (derived),
# "eADC" (exponential ADC), "sSWIp". Split it off so the name behind it is a word of its own.
_PHILIPS_PREFIX = re.compile(r"(?<![A-Za-z0-9])([sde])(?=[A-Z]{2}|[A-Z]\d)")


def normalise(text: str) -> str:
    """Lower case, accents removed ("Schädel" -> "schadel"), "w/o" -> "without", every separator
    (underscore, dash, dot, slash, brackets) a single space; "+" and "*" kept as words of their own
    because they carry meaning ("T1+C", "T2*"). Letters of any script are kept."""
    text = _PHILIPS_PREFIX.sub(r"\1 ", text)
    decomposed = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    text = re.sub(r"\bw\s*/\s*o\b", " without ", text)
    text = re.sub(r"\bw\s*/", " with ", text)
    text = re.sub(r"([+*])", r" \1 ", text)
    text = re.sub(r"[^\w+*]|_", " ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class TextRule:
    """A pattern that is evidence for ``role`` when it matches the normalised text.

    ``unless``: the same text also matching this pattern cancels the rule ("t2" in "t2 flair" is not
    evidence for T2). ``derived_weight``: the weight on a DERIVED image when it differs (a reformat
    marker is decisive on a derived series, a weak hint on an original one)."""

    role: SeriesRole
    label: str
    pattern: re.Pattern[str]
    weight: float
    unless: re.Pattern[str] | None = None
    derived_weight: float | None = None

    def weight_for(self, text: str, *, derived: bool, context: str | None = None) -> float:
        """The rule's weight on ``text`` (normalised), 0 when it does not apply. ``unless`` is looked
        for in ``context`` when given: the series' other names (an ADC map keeps the diffusion
        protocol's name, "ep2d_diff", in ProtocolName; its description says "ADC")."""
        cancelled = self.unless is not None and self.unless.search(text if context is None else context)
        if not self.pattern.search(text) or cancelled:
            return 0.0
        return self.derived_weight if derived and self.derived_weight is not None else self.weight


def _rule(
    role: SeriesRole,
    label: str,
    pattern: str,
    weight: float,
    *,
    unless: str | None = None,
    derived_weight: float | None = None,
) -> TextRule:
    return TextRule(role, label, re.compile(pattern), weight, re.compile(unless) if unless else None, derived_weight)


# Weights: 3-4 a name that alone identifies the role, 2-2.5 a common but less specific name,
# 1 a hint; 20 decides (a localizer or a reformat is never an input, whatever else it looks like:
# an SWI minIP carries every SWI marker, together well over 10).
DECISIVE = 20.0

_ADC_NAME = r"\badc|\bdadc|apparent diffusion"
_EXPONENTIAL_ADC = r"\be ?adc|exponential"
_FLAIR_NAME = r"flair|\btirm|dark ?fluid|\bda ?fl\b|fluid att|\bt2 fl\b"
_T1_FLAIR = r"\bt1w? ?(?:flair|tirm)"  # GE "T1 FLAIR" is a T1-weighted inversion recovery, not a FLAIR
_T2STAR_NAME = r"\bs?swi|\bswan\b|suscept|venobold|\bt2 ?\*|\bt2 ?star|\bhemo|\bgre\b|\bt2 ?fl[23]d|\bt2 ?ffe|\bmedic\b"

TEXT_RULES: tuple[TextRule, ...] = (
    # FLAIR
    _rule(Role.FLAIR, "flair", r"flair", 3.0, unless=_T1_FLAIR),
    _rule(Role.FLAIR, "tirm", r"\btirm", 3.0, unless=_T1_FLAIR),
    _rule(Role.FLAIR, "dark-fluid", r"dark ?fluid|\bda ?fl\b", 3.0),
    _rule(Role.FLAIR, "fluid attenuated", r"fluid att", 3.0),
    _rule(Role.FLAIR, "t2 fl", r"\bt2 fl\b", 2.5),
    _rule(Role.FLAIR, "ir fse", r"\bir ?[ft]se\b|\b[ft]se ?ir\b|\birtse\b", 1.0),
    # T2 (and not FLAIR, not T2*/SWI, which both carry "t2" in their names)
    _rule(Role.T2, "t2", r"\bt2(?![0-9*])", 2.5, unless=f"{_FLAIR_NAME}|{_T2STAR_NAME}|\\bt2 ?map"),
    _rule(
        Role.T2,
        "tse/fse",
        r"\b[tf]se\b|\bfrfse\b|\bblade\b|\bpropeller\b|\bhaste\b",
        1.0,
        unless=f"{_FLAIR_NAME}|\\bt1|\\bpdw?\\b|\\bir\\b",
    ),
    # T1
    _rule(Role.T1, "t1", r"\bt1(?!\d)", 2.5, unless=r"\bt1 ?map|\bt1 ?rho"),
    _rule(Role.T1, "t1 flair", _T1_FLAIR, 2.5),
    _rule(Role.T1, "mprage", r"\bmp ?rage|\bmp2rage", 3.0),
    _rule(Role.T1, "bravo/spgr", r"\bbravo\b|\bf?spgr\b|\befgre", 3.0),
    _rule(Role.T1, "mpr", r"\bmpr\b", 2.0, unless=r"flair|\bt2|swi|dwi|adc"),
    _rule(Role.T1, "tfe", r"\bt1 ?[tf]fe\b|\b3d ?tfe\b|\btfe\b", 2.0, unless=r"\bt2"),
    _rule(Role.T1, "vibe/fl3d", r"\bvibe\b|\bfl3d\b|\blava\b|\bthrive\b", 2.0, unless=r"\bt2|swi|tof|angio"),
    # Diffusion: the ADC map is named after the diffusion series it comes from, so ADC names cancel DWI.
    _rule(Role.ADC, "adc", _ADC_NAME, 4.0, unless=_EXPONENTIAL_ADC),
    _rule(Role.DWI, "dwi", r"\bdwi|\bdw\b|\bisodwi", 3.0, unless=_ADC_NAME),
    _rule(Role.DWI, "diffusion", r"diffusion|\bdiff\b", 3.0, unless=f"{_ADC_NAME}|tensor|\\bdti\\b"),
    _rule(Role.DWI, "trace", r"\btrace ?w?\b", 2.0, unless=_ADC_NAME),
    _rule(
        Role.DWI,
        "b-value",
        r"\bb ?(?:[5-9]\d\d|[1-4]\d{3})\b|\b(?:[5-9]\d\d|[1-4]\d{3}) ?b\b",
        2.0,
        unless=_ADC_NAME,
    ),
    # SWI and T2*-weighted gradient echo
    _rule(Role.SWI, "swi", r"\bs?swi|\bswan\b|suscept|venobold", 3.5),
    _rule(Role.SWI, "t2*", r"\bt2 ?\*|\bt2 ?star|\bhemo", 3.0),
    _rule(Role.SWI, "gre", r"\bgre\b|\bt2 ?fl[23]d|\bt2 ?ffe|\bmedic\b|\bmerge\b", 2.0, unless=r"\bt1"),
    # Not an input of any pipeline
    _rule(
        Role.OTHER,
        "localizer",
        r"locali[sz]|\bloc\b|\bscout|survey|\b3 ?plane|three ?plane|\btri ?pilot|"
        r"\bpilot\b|\baahead|topogram|\bsurview|\bscanogram|\bcal(?:ibration)?\b|\basset ?cal|\bcoil ?sens|"
        r"\bsense ?ref|\bref ?scan|\bprescan|\bauto ?align",
        DECISIVE,
    ),
    _rule(
        Role.OTHER,
        "screen capture/report",
        r"screen ?save|screen ?shot|secondary capture|key ?images?|"
        r"dose ?(?:report|info)|patient ?protocol|exam ?summary|\bphoenix",
        DECISIVE,
    ),
    _rule(
        Role.OTHER,
        "projection/reformat",
        r"\bm?in ?ip\b|\bm ?ip\b|\bminip\b|reformat|\bvrt?\b|3d ?render|"
        r"\bsub(?:traction)?\b",
        3.0,
        derived_weight=DECISIVE,
    ),
    _rule(Role.OTHER, "mpr reformat", r"\bmpr\b|\bmprs\b", 0.0, derived_weight=DECISIVE),
    _rule(
        Role.OTHER,
        "exponential adc/tensor",
        f"{_EXPONENTIAL_ADC}|\\bdti\\b|tensor|\\bfa\\b|colfa|\\bfa ?map",
        5.0,
    ),
    _rule(
        Role.OTHER,
        "angio/perfusion/functional/maps",
        r"\btof\b|angio|\bmra\b|\bmrv\b|veno(?!bold)|\bperf|"
        r"\bdsc\b|\bdce\b|\bpwi\b|\basl\b|\bpcasl|\bpasl|\bbold\b|fmri|resting|spectro|\bsvs\b|\bcsi\b|\bmrs\b|"
        r"\bcine\b|phase ?contrast|\bflow\b|\bcbf\b|\bcbv\b|\bmtt\b|\bttp\b|\brcbv|ktrans|\bmoco\b|"
        r"\bt[12] ?map|\bt1 ?rho|mapping|relaxometry|\bqsm\b",
        4.0,
    ),
    # "DTIphase", "SWIphase": vendors glue the word to the sequence's name.
    _rule(Role.OTHER, "phase image", r"\bpha\b|\b(?:dti|dwi|swi|diff?)?phase\b(?! ?contrast)|\bphs\b", 4.0),
    _rule(Role.OTHER, "magnitude", r"\bmag\b|magnitude", 2.0),
    _rule(Role.OTHER, "proton density", r"\bpdw?\b|proton ?density", 2.5, unless=r"\bt2(?![0-9*])"),
)

# Siemens, GE and Philips sequence names (SequenceName, lower case, as written).
SEQUENCE_NAME_RULES: tuple[TextRule, ...] = (
    _rule(
        Role.T1,
        "prepared/spoiled 3D gradient echo",
        r"tfl3d|mprage|efgre3d|fspgr|bravo|t1tfe|t1ffe|tfe3d",
        1.5,
    ),
    _rule(Role.SWI, "susceptibility-weighted", r"swi|swan", 2.0),
    _rule(Role.DWI, "diffusion", r"ep_b\d|dwi|diff", 1.5, unless=r"_adc|adc"),
)

# Contrast markers in names. Negations win: "without contrast" contains "contrast".
POST_CONTRAST_STRONG = re.compile(
    r"\+ ?c\b|\bc ?\+|\+ ?(?:gd|gad|km|mdc)|\bgd\b|\bgad\b|\bgado\w*|gadolin|\bpost ?gd|\bce\b"
    r"|(?<!phase )contrast|\bkontrast\w*|\bkm\b|\bmdc\b|\benhanced\b|\binjecte\b"
)
# "post" alone is only a hint: it also stands for post-operative and posterior (fossa).
POST_CONTRAST_HINT = re.compile(r"\bpost(?!\s?(?:op|operat|surg|fossa|treat|ther|rad|resect|biop|erior|ior))")
PRE_CONTRAST = re.compile(
    r"\bpre(?:contrast|gd|gad|km)?\b(?! ?(?:op|operat|surg|treat|ther|rad|scan|sat))|\bnativ\w*|\bwithout\b"
    r"|\bno ?(?:contrast|gad|gd|km|mdc)|\bnon ?(?:contrast|enhanced|con)\b|\bnoncontrast|\bohne\b|\bsenza\b"
    r"|\bsans\b|\bsin (?:contrast|gad)|\bunenhanced\b|\bplain\b"
)
