"""Diffusion series: b=0, one trace-weighted image per b-value, and an ADC map computed from them.

A DWI series holds a b=0 volume and, per non-zero b-value, one volume per gradient direction. The
trace-weighted image of a b-value is the geometric mean over its directions (what scanners show as
TRACEW: it does not depend on how fibres run), and the apparent diffusion coefficient follows from
S_b = S_0 exp(-b ADC), fitted by least squares over the b-values in ln S. ADC is in mm²/s (the DICOM
units of b are s/mm²), float, zero where there is no signal to fit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from neuroflow.core.split_volumes import Split

ADC_LABEL = "adc"
# Voxels whose b=0 signal is below this fraction of its 99th percentile are background: no ADC there.
_SIGNAL_FRACTION = 0.05
# Free water at body temperature is 3e-3 mm²/s; anything far above is noise or a fit across a vessel.
ADC_MAX_MM2_S = 5e-3


class Derivation(StrEnum):
    MEAN = "geometric mean"  # b=0, and the trace of a b-value over its directions
    ADC = "ADC"


@dataclass(frozen=True)
class DiffusionVolume:
    """One volume a DWI series gives: which acquired volumes (labels) it comes from and how."""

    label: str  # "b=0", "b=1000", "adc"
    derivation: Derivation
    sources: tuple[str, ...]
    b_values: tuple[float, ...]  # the b-value, or those the ADC was fitted over

    def describe(self) -> str:
        if self.derivation == Derivation.ADC:
            return f"ADC computed from b = {', '.join(f'{b:g}' for b in self.b_values)} s/mm²"
        if len(self.sources) > 1:
            return f"b={self.b_values[0]:g} trace (geometric mean of {len(self.sources)} directions)"
        return f"b={self.b_values[0]:g}"


def diffusion_volumes(split: Split) -> list[DiffusionVolume]:
    """What a series split by b-value (and gradient direction) gives: b=0, a trace per non-zero b and
    an ADC map when there are a b=0 and a non-zero b; [] when the series was not split that way."""
    if not split.is_split or "b" not in split.keys or not set(split.keys) <= {"b", "dir"}:
        return []
    by_b: dict[float, list[str]] = {}
    for volume in split.volumes:
        by_b.setdefault(float(volume.keys["b"] or "nan"), []).append(volume.label)
    if any(np.isnan(b) for b in by_b):
        return []  # a volume without a b-value: leave the acquired volumes as they are
    out = [
        DiffusionVolume(f"b={b:g}", Derivation.MEAN, tuple(labels), (b,)) for b, labels in sorted(by_b.items())
    ]
    if 0.0 in by_b and len(by_b) > 1:
        out.append(DiffusionVolume(ADC_LABEL, Derivation.ADC, tuple(v.label for v in out), tuple(sorted(by_b))))
    return out


def geometric_mean(volumes: Sequence[npt.NDArray[np.floating]]) -> npt.NDArray[np.float32]:
    """Voxel-wise geometric mean (0 where any volume is 0 or below: no signal to average)."""
    stack = np.stack([np.asarray(v, dtype=np.float64) for v in volumes])
    positive = np.all(stack > 0, axis=0)
    logs = np.log(np.where(stack > 0, stack, 1.0))
    return np.where(positive, np.exp(logs.mean(axis=0)), 0.0).astype(np.float32)


def adc_map(by_b: Mapping[float, npt.NDArray[np.floating]]) -> npt.NDArray[np.float32]:
    """ADC (mm²/s) per voxel from trace images keyed by b-value (s/mm², one of them 0): the least
    squares slope of ln S over b, negated; 0 outside the signal and clipped to [0, ADC_MAX_MM2_S]."""
    b_values = np.array(sorted(by_b), dtype=np.float64)
    if b_values.size < 2 or b_values[0] != 0.0:
        raise ValueError(f"ADC needs b=0 and a non-zero b-value, got {list(b_values)}")
    stack = np.stack([np.asarray(by_b[b], dtype=np.float64) for b in b_values])
    s0 = stack[0]
    signal = s0 > _SIGNAL_FRACTION * float(np.percentile(s0, 99))
    valid = signal & np.all(stack > 0, axis=0)
    logs = np.log(np.where(stack > 0, stack, 1.0))
    centred = b_values - b_values.mean()
    slope = np.tensordot(centred, logs - logs.mean(axis=0), axes=(0, 0)) / float(centred @ centred)
    adc = np.clip(-slope, 0.0, ADC_MAX_MM2_S)
    return np.where(valid, adc, 0.0).astype(np.float32)
