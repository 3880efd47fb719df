"""The identity of one volume of a series that holds several (echoes, time points, stacks, diffusion
b-values, the computed ADC): "<SeriesInstanceUID>#<volume>", e.g. "1.2.3#echo=2". Routing, the report
and conversion all name a volume this way; a series that is one volume keeps its plain UID."""

from __future__ import annotations

SEPARATOR = "#"  # never in a UID (digits and dots only)


def sub_series_uid(series_uid: str, label: str) -> str:
    """"<series uid>#<label>" ("" label: the series itself)."""
    return f"{series_uid}{SEPARATOR}{label}" if label else series_uid


def parse_sub_series_uid(uid: str) -> tuple[str, str]:
    """(series uid, volume label) of a ``sub_series_uid``; label "" for a plain series UID."""
    series_uid, _, label = uid.partition(SEPARATOR)
    return series_uid, label


def volume_identity(uid: str) -> list[str]:
    """What the input hash adds for one volume of a series beside the series' SOPInstanceUIDs (the
    sub-series UID; nothing for a plain series): another echo of the same instances is other work.
    Both runtimes hash inputs this way, so their result UIDs agree."""
    return [uid] if parse_sub_series_uid(uid)[1] else []
