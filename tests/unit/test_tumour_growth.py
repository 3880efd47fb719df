"""Tumour growth over a patient's timepoints: changes from previous, baseline and nadir, the growth rate
and doubling time, the 40 % volumetric threshold (RANO's 25 % in 2D), and the SVG plot."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest

from neuroflow.core.labels import TumourRegion
from neuroflow.longitudinal.tumour_growth import (
    PROGRESSION_THRESHOLD_PCT,
    GliomaTimepoint,
    growth_plot_svg,
    tumour_growth,
)
from neuroflow.results.report import TumourVolumes


def _point(date: str, wt: float, tc: float, et: float) -> GliomaTimepoint:
    return GliomaTimepoint(f"1.2.{date}", date, TumourVolumes(WT=wt, TC=tc, ET=et))


def test_rano_threshold_is_the_volume_equivalent_of_25_percent_in_two_dimensions() -> None:
    # A sphere whose diameter product grows by 25 % grows by 1.25^(3/2) in volume.
    assert abs(PROGRESSION_THRESHOLD_PCT - 100 * (1.25 ** 1.5 - 1)) < 0.5


def test_growth_is_measured_from_the_nadir_and_flags_40_percent() -> None:
    # ET shrinks after treatment (nadir 8 mL), then regrows to 12 mL: +50 % from the nadir, -20 % from baseline.
    growth = tumour_growth([_point("20240301", 40, 14, 12), _point("20230101", 50, 20, 15),
                            _point("20230701", 38, 11, 8)])
    assert growth.region is TumourRegion.ET
    assert [p.study_date for p in growth.points] == ["20230101", "20230701", "20240301"]
    last = growth.points[-1]
    assert last.change_from_nadir_pct == pytest.approx(50.0)
    assert last.change_from_baseline_pct == pytest.approx(-20.0)
    assert last.change_from_previous_pct == pytest.approx(50.0)
    assert growth.threshold_exceeded
    interval = last.months_from_baseline - growth.points[1].months_from_baseline
    assert interval == pytest.approx(244 / (365.25 / 12), abs=0.01)  # 2023-07-01 .. 2024-03-01: 244 days
    assert growth.rate_ml_per_month == pytest.approx(4.0 / interval, rel=1e-3)
    assert growth.doubling_time_months == pytest.approx(interval * math.log(2) / math.log(1.5), rel=1e-3)


def test_growth_below_the_threshold_is_not_flagged_and_shrinkage_has_no_doubling_time() -> None:
    growing = tumour_growth([_point("20230101", 20, 10, 5.0), _point("20230401", 22, 11, 6.5)])
    assert growing.change_from_nadir_pct == pytest.approx(30.0)
    assert not growing.threshold_exceeded
    shrinking = tumour_growth([_point("20230101", 20, 10, 5.0), _point("20230401", 15, 8, 3.0)])
    assert shrinking.doubling_time_months is None and shrinking.rate_ml_per_month is not None
    assert shrinking.rate_ml_per_month < 0 and not shrinking.threshold_exceeded


def test_non_enhancing_tumour_is_measured_on_the_whole_tumour() -> None:
    growth = tumour_growth([_point("20230101", 10, 2, 0.2), _point("20231001", 15, 3, 0.3)])
    assert growth.region is TumourRegion.WT
    assert growth.change_from_nadir_pct == pytest.approx(50.0) and growth.threshold_exceeded


def test_a_single_timepoint_or_two_on_one_date_are_refused() -> None:
    with pytest.raises(ValueError, match="at least two"):
        tumour_growth([_point("20230101", 1, 1, 1)])
    with pytest.raises(ValueError, match="share a study date"):
        tumour_growth([_point("20230101", 1, 1, 1), _point("20230101", 2, 2, 2)])


def test_plot_is_valid_svg_with_a_line_per_region_and_the_threshold() -> None:
    growth = tumour_growth([_point("20230101", 50, 20, 15), _point("20230701", 38, 11, 8),
                            _point("20240301", 40, 14, 12)])
    svg = growth_plot_svg(growth)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 3 and all(len(line.get("points", "").split()) == 3 for line in lines)
    texts = [t.text or "" for t in root.iter(f"{ns}text")]
    assert {"2023-01-01", "2023-07-01", "2024-03-01"} <= set(texts)
    assert any("+40 %" in t for t in texts) and any("AI output for review" in t for t in texts)
    dashed = [line for line in root.findall(f"{ns}line") if line.get("stroke-dasharray")]
    assert len(dashed) == 1
    # The threshold line lies at nadir x 1.4 = 11.2 mL, below the last ET point (12 mL) on the plot.
    et_last_y = float(lines[2].get("points", "").split()[-1].split(",")[1])
    assert float(dashed[0].get("y1", "0")) > et_last_y
