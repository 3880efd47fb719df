"""Whether a study is post-operative: the evidence routing sends a glioma study to ``glioma_postop`` on.

Two kinds of evidence, either enough: the study's or a series' description says so ("post op", "postop",
"post-resection", "s/p resection", and the German, French, Dutch, Spanish and Italian words), or a prior
study of the same patient had tumour (a prior the caller found, e.g. neuroflow's own earlier glioma result).
Descriptions are normalised as the series classifier does (ingest.text_patterns.normalise: case, accents,
separators), so "Post-OP", "postopératoire" and "POSTOPERATIV" read alike. A site adds its own phrases in its
site rules (``postoperative_patterns``)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from neuroflow.ingest.text_patterns import normalise

# Matched on normalised text (lower case, no accents, separators as single spaces). "op" alone is not enough
# ("op" is also an operator's initials, "OPT" an option): it must follow "post"/"s p"/"nach".
POSTOPERATIVE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("post-operative", re.compile(r"\bpost ?op(erative?|eratoire|eratief|eratorio|eratoria|eratorio)?\b")),
    ("post-resection", re.compile(r"\bpost ?(resection|resektion|exeresis|surgery|surgical|surg)\b")),
    ("status post resection", re.compile(r"\bs ?p (resection|surgery|craniotomy|gtr|str|op)\b|\bstatus post\b")),
    ("after resection", re.compile(r"\b(after|following) (resection|surgery|craniotomy)\b")),
    ("postoperativ (de)", re.compile(r"\bpostoperativ\b|\bnach (op|operation|resektion)\b|\bz n (op|resektion)\b")),
    ("resection cavity", re.compile(r"\b(resection|surgical) cavity\b|\bresektionshohle\b|\bcavite operatoire\b")),
)
# Said of a study before surgery: cancels the description evidence ("pre-op", "praeoperativ", "preop planning").
_PREOPERATIVE = re.compile(r"\bpr(a|ae|e) ?op(erative?|eratoire|eratief|erativ)?\b")


@dataclass(frozen=True)
class PriorTumour:
    """A prior study of the same patient and the tumour volume found there (mL)."""

    study_date: str
    tumour_ml: float


def description_evidence(descriptions: Iterable[str], extra_patterns: Sequence[str] = ()) -> list[str]:
    """One line per description that says the study is post-operative (naming the phrase), none when no
    description does or one says pre-operative. ``extra_patterns``: the site's own regular expressions, searched
    case-insensitively in the description as written."""
    found: list[str] = []
    for description in dict.fromkeys(d for d in descriptions if d):
        text = normalise(description)
        if _PREOPERATIVE.search(text):
            return []
        for name, pattern in POSTOPERATIVE_PATTERNS:
            if pattern.search(text):
                found.append(f"description {description!r} says {name}")
                break
        else:
            site = next((p for p in extra_patterns if re.search(p, description, re.IGNORECASE)), None)
            if site is not None:
                found.append(f"description {description!r} matches the site's post-operative pattern {site!r}")
    return found


def prior_evidence(prior: PriorTumour | None, *, min_tumour_ml: float = 0.1) -> list[str]:
    """The line saying a prior study had tumour (at least ``min_tumour_ml``), none otherwise."""
    if prior is None or prior.tumour_ml < min_tumour_ml:
        return []
    return [f"prior study of {prior.study_date or 'unknown date'} had tumour ({prior.tumour_ml:.1f} mL): the tumour "
            "bed is followed up as post-operative"]


def postoperative_evidence(descriptions: Iterable[str], *, prior: PriorTumour | None = None,
                           extra_patterns: Sequence[str] = ()) -> list[str]:
    """Every reason the study is post-operative (empty: it is not taken as post-operative)."""
    return [*description_evidence(descriptions, extra_patterns), *prior_evidence(prior)]
