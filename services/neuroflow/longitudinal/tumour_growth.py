"""Glioma volumes across a patient's timepoints: change, growth rate, the RANO-equivalent volumetric
threshold, and a plot of volume over time (an SVG drawn here; no plotting library needed).

RANO measures progression in 2D as a 25 % increase of the sum of perpendicular diameter products over the
smallest measurement (the nadir); for a sphere that corresponds to a 40 % increase in volume
(1.25^(3/2) ≈ 1.40), the threshold volumetric studies use. Rates are over the last interval, because a
radiologist asks "how fast is it growing now".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape

from neuroflow.core.labels import TumourRegion
from neuroflow.results.report import GrowthPoint, TumourGrowth, TumourVolumes

PROGRESSION_THRESHOLD_PCT = 40.0  # volume increase from the nadir ~ RANO's 25 % in 2D
DAYS_PER_MONTH = 365.25 / 12
# Enhancing tumour is what RANO measures in high-grade glioma; below this volume it is not measurable and
# the whole tumour (the T2/FLAIR abnormality, as in RANO for low-grade glioma) is measured instead.
MIN_MEASURABLE_ET_ML = 1.0
PLOT_FILE = "tumour_growth.svg"


@dataclass(frozen=True)
class GliomaTimepoint:
    """The glioma volumes measured on one study."""

    study_instance_uid: str
    study_date: str  # YYYYMMDD
    volumes: TumourVolumes


def tumour_growth(timepoints: Sequence[GliomaTimepoint], *, plot_file: str | None = PLOT_FILE) -> TumourGrowth:
    """The growth section of a patient with at least two timepoints (any order; sorted by date here).

    The measured region is ET when any timepoint has at least :data:`MIN_MEASURABLE_ET_ML` of it, else WT.
    Percent changes from a zero volume are ``None`` (undefined), as is the doubling time of a tumour
    that is not growing. Refuses (ValueError) fewer than two timepoints or two on the same date."""
    points = sorted(timepoints, key=lambda t: t.study_date)
    if len(points) < 2:
        raise ValueError("tumour growth needs at least two timepoints")
    dates = [datetime.strptime(t.study_date, "%Y%m%d") for t in points]
    if len(set(dates)) != len(dates):
        raise ValueError("two timepoints share a study date: no interval to measure growth over")
    et_measurable = any(t.volumes.ET >= MIN_MEASURABLE_ET_ML for t in points)
    region = TumourRegion.ET if et_measurable else TumourRegion.WT
    values = [_region_ml(t.volumes, region) for t in points]
    months = [(d - dates[0]).days / DAYS_PER_MONTH for d in dates]

    growth_points: list[GrowthPoint] = []
    for index, (timepoint, value) in enumerate(zip(points, values, strict=True)):
        nadir = min(values[:index]) if index else None
        growth_points.append(GrowthPoint(
            study_instance_uid=timepoint.study_instance_uid,
            study_date=timepoint.study_date,
            months_from_baseline=round(months[index], 3),
            volumes_ml=timepoint.volumes,
            change_from_previous_pct=_pct(values[index - 1], value) if index else None,
            change_from_baseline_pct=_pct(values[0], value) if index else None,
            change_from_nadir_pct=_pct(nadir, value) if nadir is not None else None,
        ))

    previous, last = values[-2], values[-1]
    interval = months[-1] - months[-2]
    rate_ml = (last - previous) / interval
    rate_pct = _pct(previous, last)
    doubling = (interval * math.log(2) / math.log(last / previous)) if previous > 0 and last > previous else None
    from_nadir = growth_points[-1].change_from_nadir_pct
    nadir = min(values[:-1])
    # Growth from nothing (a new lesion after complete resection) is progression as well.
    exceeded = (from_nadir is not None and from_nadir >= PROGRESSION_THRESHOLD_PCT) or (nadir == 0.0 < last)
    return TumourGrowth(
        region=region,
        points=growth_points,
        rate_ml_per_month=round(rate_ml, 4),
        rate_pct_per_month=round(rate_pct / interval, 3) if rate_pct is not None else None,
        doubling_time_months=round(doubling, 2) if doubling is not None else None,
        threshold_pct=PROGRESSION_THRESHOLD_PCT,
        change_from_nadir_pct=from_nadir,
        threshold_exceeded=exceeded,
        plot_file=plot_file,
    )


def growth_plot_svg(growth: TumourGrowth) -> str:
    """A self-contained SVG of WT, TC and ET volume over time (months from baseline), with the progression
    threshold (nadir + 40 %) of the measured region as a dashed line, for the report."""
    width, height = 640, 360
    left, right, top, bottom = 70, 130, 40, 60
    plot_w, plot_h = width - left - right, height - top - bottom
    months = [p.months_from_baseline for p in growth.points]
    series = {region: [_region_ml(p.volumes_ml, region) for p in growth.points] for region in TumourRegion}
    measured = series[growth.region]
    threshold = min(measured[:-1]) * (1 + growth.threshold_pct / 100)
    top_value = max([*(v for values in series.values() for v in values), threshold, 1.0]) * 1.1
    span = max(months[-1], 1e-6)

    def x(month: float) -> float:
        return left + plot_w * month / span

    def y(value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    colours = {TumourRegion.WT: "#1f77b4", TumourRegion.TC: "#ff7f0e", TumourRegion.ET: "#d62728"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<title>Glioma volume over time (AI output for review; not a diagnosis)</title>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">Glioma volume over time (mL) -- AI output for review</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
    ]
    for tick in _ticks(top_value):
        parts.append(f'<line x1="{left - 4}" y1="{y(tick):.1f}" x2="{left}" y2="{y(tick):.1f}" stroke="black"/>')
        parts.append(f'<text x="{left - 8}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    for point, month in zip(growth.points, months, strict=True):
        parts.append(f'<line x1="{x(month):.1f}" y1="{top + plot_h}" x2="{x(month):.1f}" y2="{top + plot_h + 4}" '
                     'stroke="black"/>')
        label = f"{point.study_date[:4]}-{point.study_date[4:6]}-{point.study_date[6:]}"
        parts.append(f'<text x="{x(month):.1f}" y="{top + plot_h + 18}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">study date</text>')
    parts.append(f'<line x1="{left}" y1="{y(threshold):.1f}" x2="{left + plot_w}" y2="{y(threshold):.1f}" '
                 f'stroke="{colours[growth.region]}" stroke-dasharray="6,4"/>')
    parts.append(f'<text x="{left + plot_w + 6}" y="{y(threshold) + 4:.1f}">'
                 f'{escape(str(growth.region))} +{growth.threshold_pct:g} %</text>')
    for row, (region, values) in enumerate(series.items()):
        colour = colours[region]
        path = " ".join(f"{x(m):.1f},{y(v):.1f}" for m, v in zip(months, values, strict=True))
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        parts += [f'<circle cx="{x(m):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>'
                  for m, v in zip(months, values, strict=True)]
        legend_y = top + 16 * row
        parts.append(f'<rect x="{left + plot_w + 10}" y="{legend_y}" width="12" height="3" fill="{colour}"/>')
        parts.append(f'<text x="{left + plot_w + 28}" y="{legend_y + 5}">{region}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _region_ml(volumes: TumourVolumes, region: TumourRegion) -> float:
    return float(getattr(volumes, region.value))


def _pct(before: float, after: float) -> float | None:
    return round(100.0 * (after - before) / before, 2) if before > 0 else None


def _ticks(top_value: float) -> list[float]:
    """About five round tick values from 0 to ``top_value``."""
    raw = top_value / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(int(top_value / step) + 1)]
