"""Which panes the viewer opens for a study, and what each shows: pure choices over the study's series and SEGs,
kept apart from Orthanc and the web so they are tested on their own.

One study: one pane, a series with its SEG drawn on top (the first SEG, or the one asked for). A longitudinal
pair (a baseline study named): three panes, baseline, follow-up and change (the follow-up with the change
SEG on top), scrolled together by patient position. The baseline's series is the one of the follow-up
series' role (the classifier's), else of the same description."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neuroflow.console.viewer.study_images import SegEntry, SeriesEntry
from neuroflow.core.errors import StudyError
from neuroflow.core.roles import SeriesRole

OVERLAY_OPACITY = 0.6  # the image stays readable under the labels


class NothingToShow(StudyError):
    """The study has no series the viewer can open, or not the one asked for."""


@dataclass(frozen=True)
class Pane:
    id: str  # "study", "baseline", "followup", "change"
    title: str
    study_key: str
    series: SeriesEntry
    seg: SegEntry | None = None


def study_panes(key: str, series: Sequence[SeriesEntry], segs: Sequence[SegEntry], *,
                series_key: str | None = None, seg_key: str | None = None) -> list[Pane]:
    """The one pane of a study: ``seg_key`` on its series; or ``series_key`` with its first SEG; or the first
    SEG on its series; or, without SEGs, the first series."""
    image, seg = _image_and_seg(key, series, segs, series_key=series_key, seg_key=seg_key)
    return [Pane("study", _title(image, seg), key, image, seg)]


def change_panes(key: str, series: Sequence[SeriesEntry], segs: Sequence[SegEntry], baseline_key: str,
                 baseline_series: Sequence[SeriesEntry], *, series_key: str | None = None,
                 seg_key: str | None = None) -> list[Pane]:
    """Baseline, follow-up and change panes of the pair (``key`` is the follow-up study)."""
    image, seg = _image_and_seg(key, series, segs, series_key=series_key, seg_key=seg_key)
    prior = _matching(image, baseline_series)
    if prior is None:
        raise NothingToShow(baseline_key, f"no series like the follow-up's {_name(image)} (role {image.role}) in "
                                          "the baseline study", stage="viewer")
    return [Pane("baseline", f"Baseline: {_name(prior)}", baseline_key, prior),
            Pane("followup", f"Follow-up: {_name(image)}", key, image),
            Pane("change", f"Change: {_title(image, seg)}", key, image, seg)]


def _image_and_seg(key: str, series: Sequence[SeriesEntry], segs: Sequence[SegEntry], *, series_key: str | None,
                   seg_key: str | None) -> tuple[SeriesEntry, SegEntry | None]:
    by_key = {s.key: s for s in series}
    if seg_key is not None:
        seg = next((s for s in segs if s.key == seg_key), None)
        if seg is None or seg.series_key not in by_key:
            raise NothingToShow(key, f"no segmentation {seg_key} on a series of the study", stage="viewer")
        return by_key[seg.series_key], seg
    if series_key is not None:
        if series_key not in by_key:
            raise NothingToShow(key, f"no image series {series_key} in the study", stage="viewer")
        return by_key[series_key], next((s for s in segs if s.series_key == series_key), None)
    for seg in segs:
        if seg.series_key in by_key:
            return by_key[seg.series_key], seg
    if not series:
        raise NothingToShow(key, "the study has no image series to show", stage="viewer")
    return series[0], None


def _matching(image: SeriesEntry, candidates: Sequence[SeriesEntry]) -> SeriesEntry | None:
    if image.role != SeriesRole.OTHER:
        same_role = [c for c in candidates if c.role == image.role]
        if same_role:
            return next((c for c in same_role if c.description == image.description), same_role[0])
    return next((c for c in candidates if c.description and c.description == image.description), None)


def _name(series: SeriesEntry) -> str:
    number = f"series {series.number}" if series.number is not None else "series"
    return f"{number} {series.description}".strip()


def _title(image: SeriesEntry, seg: SegEntry | None) -> str:
    return f"{_name(image)} + {seg.description or 'segmentation'}" if seg is not None else _name(image)
