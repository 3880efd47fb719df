"""Probes of the MS subtraction on the real pairs (issue 18): would a change of method reach the reference
lesions? Measured on the detector's own prepared pair (``ms_lesions.prepare_pair``: skull strip, registration, N4,
matching) and its own seed rule (``ms_lesions.subtraction_maps``), before any lesion-wise check.

``--scales 0.6,1.0,1.5,2.0``: for each smoothing scale (mm), how many reference lesions hold a seed voxel, how
many seeded components lie more than 5 mm from every reference lesion (would-be false positives), and the
difference's typical expected spread. A coarser scale helps only if the pair's noise falls faster than the
lesions' change.

``--signal``: what each reference lesion looks like on the detector's own scaled scans (robust spreads of the
follow-up's normal-appearing brain, after N4 and matching): its median at baseline and at follow-up and the share
of its voxels above the hyperintensity level, and, as a check that the mask sits on the scans, the mean follow-up
signal over all reference voxels with the mask in place and moved by up to 2 slices and 8 voxels in-plane.

``--volumes``: a lesion-level comparison instead of the voxel subtraction: each component of tissue hyperintense
on either visit, its hyperintense volume at baseline and at follow-up, ranked by the volume gained, and where the
reference lesions rank among them.

Reference lesions as in ``scripts/bench_ms_real.py`` (the expert change mask's components of >= 12 mm³ brighter at
follow-up), their voxels mapped onto the follow-up's grid with the database's transform. Both patients are
development data. Usage: ``python scripts/ms_real_probe.py [--patients patient03] [--scales ...] [--volumes]``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.config import NeuroflowSettings
from neuroflow.devtools.lesion_change_scoring import FALSE_POSITIVE_MM, MIN_REFERENCE_MM3
from neuroflow.devtools.ms_real_pairs import (
    DATA,
    hyperintense_shares,
    patients,
    prepared_pair,
    reference_voxels,
)
from neuroflow.longitudinal.ms_lesions import HYPERINTENSE, PreparedPair, subtraction_maps

IntArray = npt.NDArray[np.int_]
BoolArray = npt.NDArray[np.bool_]
STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--patients", nargs="*", help="only these patient folders (e.g. patient03)")
    parser.add_argument("--scales", default="", help="smoothing scales in mm, comma-separated")
    parser.add_argument("--volumes", action="store_true", help="the lesion-level volume comparison")
    parser.add_argument("--signal", action="store_true", help="each reference lesion's signal at both visits")
    parser.add_argument("--top", type=int, default=40, help="components listed by --volumes")
    args = parser.parse_args()
    settings = NeuroflowSettings()
    for folder in patients(args.data):
        if args.patients and folder.name not in args.patients:
            continue
        pair = prepared_pair(folder, settings)
        references = list(reference_voxels(folder, pair).values())
        print(f"{folder.name}: {len(references)} reference lesions (new or enlarging, >= {MIN_REFERENCE_MM3:g} mm³)")
        for scale in (float(s) for s in args.scales.split(",") if s):
            _probe_scale(pair, references, scale)
        if args.volumes:
            _probe_volumes(pair, references, args.top)
        if args.signal:
            _probe_signal(pair, references)


def _probe_scale(pair: PreparedPair, references: list[IntArray], scale_mm: float) -> None:
    maps = subtraction_maps(pair, smoothing_mm=scale_mm)
    seeded = sum(1 for kji in references if maps.seeds[tuple(kji.T)].any())
    far = _far_from(references, pair)
    _, blobs = ndimage.label(maps.seeds & far, structure=STRUCTURE)
    print(f"  smoothing {scale_mm:g} mm: reference lesions seeded {seeded}/{len(references)}, seeded components "
          f"beyond {FALSE_POSITIVE_MM:g} mm of every one {blobs}, faintest detectable change {maps.detectable:.2f}")


def _probe_volumes(pair: PreparedPair, references: list[IntArray], top: int) -> None:
    maps = subtraction_maps(pair)
    voxel_mm3 = float(np.prod(pair.geometry.spacing))
    follow, base = maps.follow_s > HYPERINTENSE, maps.base_s > HYPERINTENSE
    components, _ = ndimage.label(pair.brain & (follow | base), structure=STRUCTURE)
    owner = np.zeros(components.shape, dtype=np.int32)
    for n, kji in enumerate(references, start=1):
        owner[tuple(kji.T)] = n
    rows: list[tuple[float, float, float, set[int]]] = []
    for label, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        local = components[box] == label
        after = float(follow[box][local].sum()) * voxel_mm3
        before = float(base[box][local].sum()) * voxel_mm3
        if max(after, before) >= MIN_REFERENCE_MM3:
            rows.append((after - before, after, before, set(np.unique(owner[box][local]).tolist()) - {0}))
    rows.sort(key=lambda r: -r[0])
    print(f"  {len(rows)} hyperintense components of >= {MIN_REFERENCE_MM3:g} mm³, by volume gained:")
    covered: set[int] = set()
    for rank, (gain, after, before, owned) in enumerate(rows[:top], start=1):
        covered |= owned
        print(f"  #{rank:3d} gained {gain:7.0f} mm³ ({before:6.0f} -> {after:6.0f}), reference lesions "
              f"{sorted(owned) or '-'}, so far {len(covered)}/{len(references)}")


def _probe_signal(pair: PreparedPair, references: list[IntArray]) -> None:
    maps = subtraction_maps(pair)
    bright_before = 0
    for n, kji in enumerate(references, start=1):
        base, follow = maps.base_s[tuple(kji.T)], maps.follow_s[tuple(kji.T)]
        share_before, share_after = hyperintense_shares(maps, kji)
        bright_before += share_before >= 0.5
        print(f"  reference {n:2d} ({len(kji):4d} voxels): median {np.median(base):+.2f} -> {np.median(follow):+.2f}, "
              f"share above {HYPERINTENSE:g}: {share_before:.2f} -> {share_after:.2f}")
    print(f"  {bright_before}/{len(references)} reference lesions hyperintense over half their voxels at baseline")
    if not references:
        return
    mask = _reference_mask(references, pair)
    shifts = [(dk, dj, di) for dk in (-2, -1, 0, 1, 2) for dj in (-8, -4, 0, 4, 8) for di in (-8, -4, 0, 4, 8)]
    signal = {shift: float(maps.follow_s[np.roll(mask, shift, axis=(0, 1, 2))].mean()) for shift in shifts}
    best = max(signal, key=lambda shift: signal[shift])
    print(f"  mean follow-up signal over the reference voxels: {signal[(0, 0, 0)]:+.2f} in place, highest "
          f"{signal[best]:+.2f} moved by {best} (slices, rows, columns)")


def _reference_mask(references: list[IntArray], pair: PreparedPair) -> BoolArray:
    mask = np.zeros(pair.followup.shape, dtype=bool)
    for kji in references:
        mask[tuple(kji.T)] = True
    return mask


def _far_from(references: list[IntArray], pair: PreparedPair) -> BoolArray:
    mask = _reference_mask(references, pair)
    if not mask.any():
        return np.ones(mask.shape, dtype=bool)
    distance = ndimage.distance_transform_edt(~mask, sampling=pair.geometry.spacing[::-1])
    return np.asarray(distance > FALSE_POSITIVE_MM)


if __name__ == "__main__":
    main()
