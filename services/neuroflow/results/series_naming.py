"""What a result series is called in PACS: its kind, "NEEDS REVIEW" first when the failure flag is raised,
and the version when a re-run replaced an earlier result. SeriesDescription is LO: at most 64 characters."""

from __future__ import annotations

NEEDS_REVIEW = "NEEDS REVIEW"
_LO_MAX = 64


def series_description(base: str, *, needs_review: bool = False, version: int = 1) -> str:
    """``base``, prefixed with "NEEDS REVIEW" when flagged and suffixed "v<n>" from the second version on.
    Refuses (ValueError) a text over 64 characters: a PACS would cut the flag or the version off."""
    text = f"{NEEDS_REVIEW} {base}" if needs_review else base
    if version > 1:
        text = f"{text} v{version}"
    if len(text) > _LO_MAX:
        raise ValueError(f"series description {text!r} is over {_LO_MAX} characters")
    return text
