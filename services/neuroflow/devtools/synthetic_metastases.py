"""Synthetic brain metastases inserted into a real brain, with known truth (issue 15: training and evaluation
data for the metastases model, where no labelled metastasis data may be shipped).

What is drawn, after what metastases look like on MRI:

* **Size** 2-40 mm in diameter; by default log-uniform, as small lesions are the most common and the ones
  older methods missed.
* **Pattern** on T1 post-contrast: *solid* (homogeneous enhancement, typical of small lesions), *ring*
  (a thin enhancing rim of 1-3 mm around a non-enhancing centre) or *necrotic* (a thick irregular rim
  around a dark centre). A solid lesion under 5 mm stays solid.
* **Haemorrhage** (melanoma, renal, choriocarcinoma): a part of the lesion bright on T1 before contrast
  (methaemoglobin), so bright on T1CE whether it enhances or not, and dark on FLAIR (haemosiderin).
* **Oedema** on FLAIR: vasogenic, in the white matter around the lesion (finger-like along it, sparing the
  cortex), of a random extent that grows with the lesion; slightly dark on T1CE.
* **Site**: where haematogenous metastases lodge: at the grey-white junction and near the cortex (the
  end arterioles), never in the ventricles or outside the brain; a lesion at the surface is cut by it.
* **Shape**: a lobulated ellipsoid (random axes and low-order bumps) with a one-voxel partial-volume edge.

The background can be any brain with a T1 post-contrast and a FLAIR on one grid: Colin27 (Debian
mricron-data, its T1 standing in for the T1CE and a FLAIR made from it: :func:`colin27_background`), or a
real T1CE/FLAIR pair. The truth is the lesion label map (lesion n = the enhancing and necrotic tissue of
metastasis n, largest first, as :func:`neuroflow.core.lesions.label_lesions` numbers them), the
oedema mask, and per lesion its measures in patient coordinates."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from neuroflow.core.lesions import label_lesions
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.devtools.longitudinal_phantoms import (
    COLIN27_BRAIN,
    COLIN27_T1,
    SHARED_DATA,
    colin27,
    flair_from_t1,
    tissues_from_t1,
)

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
Pattern = Literal["solid", "ring", "necrotic"]
Site = Literal["grey-white junction", "cortical"]
SITES: tuple[Site, ...] = ("grey-white junction", "cortical")

MIN_DIAMETER_MM = 2.0
MAX_DIAMETER_MM = 40.0
SOLID_BELOW_MM = 5.0  # a smaller lesion is drawn solid whatever was asked: a 3 mm ring is not resolvable
GAP_MM = 3.0  # between the edges of two lesions (with oedema they may touch, as in patients)


@dataclass(frozen=True)
class MetastasisSpec:
    """What to draw: diameter (mm), enhancement pattern, haemorrhage, and the oedema's reach (mm beyond the
    lesion's edge; 0 = none)."""

    diameter_mm: float
    pattern: Pattern = "solid"
    haemorrhagic: bool = False
    oedema_mm: float = 0.0
    # Where its centre goes (LPS mm) instead of a random site: a follow-up draws a lesion again where it was.
    at_mm: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class MetastasisTruth:
    """One metastasis as drawn: its number in the label map and its measures (as the lesion module measures)."""

    number: int
    spec: MetastasisSpec
    site: Site
    centroid_mm: tuple[float, float, float]  # LPS
    volume_mm3: float
    longest_axial_diameter_mm: float


@dataclass
class SyntheticMetastases:
    t1ce: Volume
    flair: Volume
    labels: Volume  # uint16: 0 none, n = metastasis n (enhancing + necrotic), numbered largest first
    oedema: Volume  # uint8: 1 = FLAIR oedema outside the lesions
    truth: list[MetastasisTruth]


@dataclass(frozen=True)
class Background:
    """A brain to insert metastases into: T1 post-contrast and FLAIR on one grid, and its brain mask."""

    name: str
    t1ce: Volume
    flair: Volume
    brain_mask: Volume  # uint8, 1 = brain
    # How many enhancing veins a random case in this brain gets drawn in (fewest, most): a real T1
    # post-contrast has its own; a T1 standing in for one (Colin27) has none, so cases there get some.
    vessels: tuple[int, int] = (0, 0)


COLIN27_VESSELS = (5, 30)


def colin27_background(axial_slices: tuple[int, int] | None = None) -> Background:
    """Colin27 (whole head, 1 mm): its T1 as the T1CE (a post-contrast T1 looks like a T1 away from
    enhancing structures) and the FLAIR made from it (``longitudinal_phantoms.flair_from_t1``).
    ``axial_slices`` (first, stop): only those slices (a slab keeps a test quick), geometry kept."""
    if axial_slices is None:
        brain = colin27()
        return Background("colin27", brain.t1, brain.flair, brain.brain_mask, COLIN27_VESSELS)
    first, stop = axial_slices
    t1 = _slab(load_volume(COLIN27_T1), first, stop)
    mask = _slab(load_volume(COLIN27_BRAIN), first, stop).array > 0
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    t1 = t1.with_array(t1.array.astype(np.float32))
    return Background(f"colin27 slices {first}-{stop}", t1, flair_from_t1(t1, mask),
                      t1.with_array(mask.astype(np.uint8)), COLIN27_VESSELS)


def real_backgrounds() -> list[Background]:
    """Every brain this checkout can insert metastases into: Colin27 and, where the shared data folder is
    present, the two MS patients with a real T1 post-contrast and FLAIR (Ljubljana cross-sectional, CC BY;
    skull-stripped in MNI space; their MS lesions stay as realistic non-metastatic findings). Cases with a
    tumour already in them (the glioma cases, AURORA) are left out: their lesions have no metastasis label."""
    backgrounds = [colin27_background()]
    for patient in ("patient07", "patient26"):
        folder = SHARED_DATA / "ms-crosssectional-ljubljana" / patient
        if (folder / "T1POST.nii.gz").is_file() and (folder / "FLAIR.nii.gz").is_file():
            t1ce = load_volume(folder / "T1POST.nii.gz")
            flair = load_volume(folder / "FLAIR.nii.gz")
            mask = ndimage.binary_fill_holes((t1ce.array > 0) & (flair.array > 0))
            backgrounds.append(Background(
                f"ms-crosssectional {patient}", t1ce.with_array(np.clip(t1ce.array, 0, None).astype(np.float32)),
                flair.with_array(np.clip(flair.array, 0, None).astype(np.float32)),
                t1ce.with_array(mask.astype(np.uint8))))
    return backgrounds


def _slab(volume: Volume, first: int, stop: int) -> Volume:
    """Slices first .. stop-1 of ``volume``, on the same patient positions (the origin moves to slice first)."""
    origin = volume.geometry.index_to_patient() @ np.array([0.0, 0.0, float(first), 1.0])
    size = volume.geometry.size
    geometry = Geometry(volume.geometry.spacing, (float(origin[0]), float(origin[1]), float(origin[2])),
                        volume.geometry.direction, (size[0], size[1], stop - first))
    return Volume(np.ascontiguousarray(volume.array[first:stop]), geometry, dict(volume.meta))


def add_enhancing_vessels(background: Background, *, count: int = 30, seed: int = 0) -> Background:
    """``background`` with ``count`` contrast-filled cortical veins drawn into its T1CE: bright (1.4-2 times the
    white matter), 0.8-2 mm wide, 15-40 mm long, winding through the sulcal CSF near the surface. On a real
    T1 post-contrast these (with the dura, sinuses and choroid plexus) are what a detector must learn not to
    call a metastasis; a T1 standing in for the T1CE (Colin27) has none. They are not lesions: no label."""
    rng = np.random.default_rng(seed)
    brain = np.asarray(background.brain_mask.array) > 0
    t1ce = np.asarray(background.t1ce.array, dtype=np.float32).copy()
    tissues = tissues_from_t1(background.t1ce, brain)
    white = float(np.median(t1ce[tissues.white]))
    spacing = np.asarray(background.t1ce.geometry.spacing[::-1], dtype=np.float64)
    near_surface = ndimage.distance_transform_edt(brain, sampling=spacing) <= 8.0
    starts = np.argwhere(tissues.csf & near_surface)
    if count and starts.size == 0:
        raise ValueError(f"{background.name}: no sulcal CSF to draw vessels in")
    allowed = ndimage.binary_dilation(brain, iterations=2)
    for _ in range(count):
        point = starts[int(rng.integers(len(starts)))].astype(np.float64)
        heading = rng.normal(size=3)
        path = []
        for _ in range(int(rng.uniform(15.0, 40.0) / 0.5)):  # 0.5 mm steps
            index = tuple(np.clip(np.round(point).astype(int), 0, np.asarray(brain.shape) - 1))
            if not allowed[index]:
                break
            path.append(point * spacing)
            heading = heading / np.linalg.norm(heading) + 0.25 * rng.normal(size=3)
            point = point + 0.5 * heading / np.linalg.norm(heading) / spacing
        if len(path) < 4:
            continue
        radius = float(rng.uniform(0.4, 1.0))
        points = np.asarray(path)
        box = tuple(slice(max(0, int((lo - 2.0) // s)), min(n, int((hi + 2.0) // s) + 2))
                    for lo, hi, s, n in zip(points.min(axis=0), points.max(axis=0), spacing, brain.shape, strict=True))
        grids = np.meshgrid(*[np.arange(b.start, b.stop) * s for b, s in zip(box, spacing, strict=True)],
                            indexing="ij")
        distance, _ = cKDTree(points).query(np.stack([g.ravel() for g in grids], axis=1))
        fraction = np.clip((radius - distance.reshape(grids[0].shape)) / float(spacing.mean()) + 0.5, 0.0, 1.0)
        level = white * float(rng.uniform(1.4, 2.0))
        t1ce[box] = np.maximum(t1ce[box], (t1ce[box] * (1.0 - fraction) + level * fraction).astype(np.float32))
    return replace(background, t1ce=background.t1ce.with_array(t1ce), vessels=(0, 0))  # drawn in now


def random_specs(rng: np.random.Generator, count: int, *, min_mm: float = MIN_DIAMETER_MM,
                 max_mm: float = MAX_DIAMETER_MM, haemorrhage_rate: float = 0.15) -> list[MetastasisSpec]:
    """``count`` metastases of log-uniform diameter in [min_mm, max_mm]; larger ones more often ring or
    necrotic; oedema from none (small lesions) to about twice the lesion's radius."""
    specs = []
    for _ in range(count):
        diameter = float(math.exp(rng.uniform(math.log(min_mm), math.log(max_mm))))
        chances = (0.2, 0.5, 0.3) if diameter >= 15.0 else (0.6, 0.3, 0.1)
        pattern: Pattern = ("solid", "ring", "necrotic")[int(rng.choice(3, p=chances))]
        oedema = float(rng.uniform(0.0, 1.0) * diameter) if rng.uniform() < min(1.0, diameter / 8.0) else 0.0
        specs.append(MetastasisSpec(diameter, pattern, bool(rng.uniform() < haemorrhage_rate), oedema))
    return specs


def insert_metastases(background: Background, specs: Sequence[MetastasisSpec], *, seed: int = 0,
                      noise: float = 0.0) -> SyntheticMetastases:
    """``background`` with the metastases of ``specs`` drawn in (module doc), largest placed first, each at
    the grey-white junction or near the cortex in turn, at least :data:`GAP_MM` apart. ``noise``: Rician
    noise added to both images, as a fraction of the white matter's level (0: none).

    Refuses (ValueError) a diameter outside 2-40 mm, images on different grids, or a brain with no room
    left for a lesion."""
    for spec in specs:
        if not MIN_DIAMETER_MM <= spec.diameter_mm <= MAX_DIAMETER_MM:
            raise ValueError(f"metastasis diameter {spec.diameter_mm} mm is outside {MIN_DIAMETER_MM}-"
                             f"{MAX_DIAMETER_MM} mm")
    geometry = background.t1ce.geometry
    if not (background.flair.geometry.is_close(geometry) and background.brain_mask.geometry.is_close(geometry)):
        raise ValueError(f"{background.name}: T1CE, FLAIR and brain mask are not on one grid")
    rng = np.random.default_rng(seed)
    brain = np.asarray(background.brain_mask.array) > 0
    t1ce = np.asarray(background.t1ce.array, dtype=np.float32).copy()
    flair = np.asarray(background.flair.array, dtype=np.float32).copy()
    tissues = tissues_from_t1(background.t1ce, brain)
    t1_white = float(np.median(t1ce[tissues.white]))
    t1_grey = float(np.median(t1ce[tissues.grey]))
    flair_white = float(np.median(flair[tissues.white]))
    spacing = np.asarray(geometry.spacing[::-1], dtype=np.float64)  # (k, j, i) mm
    maps = _Maps(brain, tissues.grey, tissues.white, ndimage.distance_transform_edt(~tissues.grey, sampling=spacing),
                 ndimage.distance_transform_edt(brain, sampling=spacing))

    order = sorted(range(len(specs)), key=lambda n: -specs[n].diameter_mm)
    placed: list[tuple[npt.NDArray[np.float64], float]] = []  # (centre (k, j, i), radius mm)
    occupied = np.zeros(brain.shape, dtype=bool)
    lesion_of = np.zeros(brain.shape, dtype=np.uint16)
    oedema = np.zeros(brain.shape, dtype=bool)
    placed_sites: dict[int, Site] = {}
    for turn, n in enumerate(order):
        spec = specs[n]
        radius = spec.diameter_mm / 2.0
        preferred = SITES[turn % 2]
        if spec.at_mm is not None:  # placed by the caller; its site is named by the tissue its centre is in
            i, j, k = (np.linalg.inv(geometry.index_to_patient()) @ np.array([*spec.at_mm, 1.0]))[:3]
            centre = np.round([k, j, i]).astype(np.float64)
            site = SITES[0] if maps.white[tuple(centre.astype(int))] else SITES[1]
        else:
            for site in (preferred, *(s for s in SITES if s != preferred)):
                candidates = np.argwhere(_room(site, radius, maps))
                # Far enough from every lesion placed for the two never to touch (lobulation reaches ~1.35 radii).
                for other_centre, other_radius in placed:
                    reach = 1.35 * (radius + other_radius) + GAP_MM
                    candidates = candidates[(((candidates - other_centre) * spacing) ** 2).sum(axis=1) > reach**2]
                if candidates.size:
                    break
            else:
                raise ValueError(f"{background.name}: no room left for a {spec.diameter_mm:.1f} mm metastasis")
            centre = candidates[int(rng.integers(len(candidates)))].astype(np.float64)
        box, fraction, radial = _lobulated(brain.shape, spacing, centre, radius, rng)
        inside = (fraction >= 0.5) & brain[box]
        if not inside.any():  # a lesion smaller than a voxel still marks the voxel it sits in
            inside = np.zeros_like(inside)
            inside[tuple((centre - [s.start for s in box]).astype(int))] = True
            fraction = np.maximum(fraction, inside.astype(np.float32))
        fraction = fraction * brain[box]
        _draw(t1ce[box], flair[box], fraction, radial, spec, rng, t1_white=t1_white, t1_grey=t1_grey,
              flair_white=flair_white)
        if spec.oedema_mm > 0:
            # In a box that holds the oedema's whole reach (up to 1.6 times oedema_mm beyond the lesion).
            wide = _box(centre, 1.4 * radius + 1.6 * spec.oedema_mm + 2.0 * float(spacing.max()), spacing, brain.shape)
            within = tuple(slice(b.start - w.start, b.stop - w.start) for b, w in zip(box, wide, strict=True))
            lesion_wide = np.zeros(tuple(s.stop - s.start for s in wide), dtype=bool)
            lesion_wide[within] = inside
            fraction_wide = np.zeros(lesion_wide.shape, dtype=np.float32)
            fraction_wide[within] = fraction
            around = _oedema(lesion_wide, spec.oedema_mm, spacing, tissues.white[wide] | lesion_wide, rng)
            around &= ~occupied[wide] & brain[wide]
            level = flair_white * float(rng.uniform(1.5, 1.9))
            soft = ndimage.gaussian_filter(around.astype(np.float32), 0.7 / spacing) * (1.0 - fraction_wide)
            soft[soft < 1e-3] = 0.0  # the filter's float residue would change far tissue by an ulp
            flair[wide] = np.maximum(flair[wide], flair[wide] * (1 - soft) + level * soft)
            t1ce[wide] = t1ce[wide] * (1.0 - 0.12 * soft)  # oedema is slightly dark on T1
            oedema[wide] |= around
        occupied[box] |= inside
        lesion_of[box][inside] = n + 1
        placed_sites[n] = site
        placed.append((centre, radius))

    if noise > 0:
        t1ce = _rician(t1ce, noise * t1_white, rng)
        flair = _rician(flair, noise * flair_white, rng)
    numbered = label_lesions(background.t1ce.with_array(lesion_of))
    truth = []
    for lesion in numbered.lesions:
        n = int(np.bincount(lesion_of[numbered.labels.array == lesion.number]).argmax()) - 1
        truth.append(MetastasisTruth(lesion.number, specs[n], placed_sites[n], lesion.centroid_mm,
                                     lesion.volume_ml * 1000.0, lesion.longest_axial_diameter_mm))
    oedema &= numbered.labels.array == 0
    return SyntheticMetastases(
        t1ce=background.t1ce.with_array(t1ce), flair=background.flair.with_array(flair),
        labels=numbered.labels, oedema=background.t1ce.with_array(oedema.astype(np.uint8)), truth=truth)


@dataclass(frozen=True)
class _Maps:
    brain: BoolArray
    grey: BoolArray
    white: BoolArray
    to_grey: npt.NDArray[np.float64]  # mm to the nearest grey matter voxel
    to_surface: npt.NDArray[np.float64]  # mm to the brain's surface (depth)


def random_case(background: Background, seed: int, *, count: tuple[int, int] = (1, 12),
                noise: tuple[float, float] = (0.0, 0.04),
                vessels: tuple[int, int] | None = None) -> SyntheticMetastases:
    """One training or evaluation case: between ``count`` metastases of :func:`random_specs`, Rician noise of a
    random level in ``noise`` and between ``vessels`` enhancing veins (:func:`add_enhancing_vessels`; None:
    as many as the background asks for), all drawn from ``seed`` (the same seed, the same case)."""
    if vessels is None:
        vessels = background.vessels
    rng = np.random.default_rng(seed)
    specs = random_specs(rng, int(rng.integers(count[0], count[1] + 1)))
    if vessels[1] > 0:
        background = add_enhancing_vessels(background, count=int(rng.integers(vessels[0], vessels[1] + 1)), seed=seed)
    return insert_metastases(background, specs, seed=seed, noise=float(rng.uniform(*noise)))


def write_case(case: SyntheticMetastases, out_dir: Path) -> list[Path]:
    """``case`` as NIfTI files (t1ce, flair, labels, oedema; SimpleITK keeps the geometry, LPS to NIfTI's RAS)
    and ``truth.json`` (per lesion: number, spec, site, centroid in LPS mm, volume, diameter)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, volume in (("t1ce", case.t1ce), ("flair", case.flair), ("labels", case.labels),
                         ("oedema", case.oedema)):
        path = out_dir / f"{name}.nii.gz"
        sitk.WriteImage(volume.to_sitk(), str(path), useCompression=True)
        paths.append(path)
    truth = out_dir / "truth.json"
    truth.write_text(json.dumps([asdict(t) for t in case.truth], indent=1) + "\n")
    return [*paths, truth]


def _room(site: Site, radius_mm: float, maps: _Maps) -> BoolArray:
    """Where the centre of a lesion of ``radius_mm`` may go at ``site``: at the junction, in white matter with
    the lesion reaching the grey matter (a small one on the junction, a large one across it) and wholly in the
    brain; near the cortex, deep enough that most of the lesion is brain and shallow enough that it reaches
    the cortex (a small one in the grey matter itself), so a large cortical lesion abuts the surface."""
    if site == "grey-white junction":
        return maps.white & (maps.to_grey <= max(2.0, 0.5 * radius_mm)) & (maps.to_surface >= radius_mm)
    depth = max(1.0, 0.6 * radius_mm)
    room = maps.brain & (maps.to_surface >= depth) & (maps.to_surface <= depth + 5.0)
    return room & maps.grey if radius_mm < 3.0 else room


def _lobulated(shape: tuple[int, ...], spacing: npt.NDArray[np.float64], centre: npt.NDArray[np.float64],
               radius_mm: float, rng: np.random.Generator,
               ) -> tuple[tuple[slice, ...], FloatArray, FloatArray]:
    """A lobulated ellipsoid of mean radius ``radius_mm`` around ``centre`` (k, j, i): its box, the fraction of
    each voxel inside (a linear ramp one voxel wide: partial volume) and each voxel's radial position
    (0 at the centre, 1 at the edge) for the enhancement pattern."""
    axes = np.exp(rng.uniform(-0.15, 0.15, 3))
    axes /= np.prod(axes) ** (1.0 / 3.0)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    bumps = rng.normal(size=(4, 3))
    bumps /= np.linalg.norm(bumps, axis=1, keepdims=True)
    weights = rng.uniform(-0.08, 0.08, 4) if radius_mm >= 3.0 else np.zeros(4)
    box = _box(centre, radius_mm * 1.4 + 2.0 * float(spacing.max()), spacing, shape)
    lo = np.array([b.start for b in box])
    hi = np.array([b.stop for b in box])
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing, strict=True)],
                        indexing="ij")
    points = np.stack(grids, axis=-1) @ rotation
    distance = np.linalg.norm(points, axis=-1)
    unit = points / np.maximum(distance, 1e-6)[..., None]
    edge = radius_mm * (1.0 + (weights * (unit @ bumps.T) ** 2).sum(axis=-1) - weights.sum() / 3.0)
    scaled = np.linalg.norm(points / axes, axis=-1)
    radial = (scaled / np.maximum(edge, 1e-6)).astype(np.float32)
    voxel = float(spacing.mean())
    fraction = np.clip((edge - scaled) / voxel + 0.5, 0.0, 1.0).astype(np.float32)
    return box, fraction, radial


def _box(centre: npt.NDArray[np.float64], reach_mm: float, spacing: npt.NDArray[np.float64],
         shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The voxels within ``reach_mm`` of ``centre`` (k, j, i) along each axis, clipped to the grid."""
    lo = np.maximum(np.floor(centre - reach_mm / spacing).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach_mm / spacing).astype(int) + 1, np.asarray(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _draw(t1ce: FloatArray, flair: FloatArray, fraction: FloatArray, radial: FloatArray, spec: MetastasisSpec,
          rng: np.random.Generator, *, t1_white: float, t1_grey: float, flair_white: float) -> None:
    """Paint one lesion into the two image boxes (in place) by its pattern and haemorrhage."""
    pattern = spec.pattern if spec.diameter_mm >= SOLID_BELOW_MM else "solid"
    enhancing = t1_white * float(rng.uniform(1.35, 1.9))
    radius = spec.diameter_mm / 2.0
    if pattern == "solid":
        t1_level = np.full(fraction.shape, enhancing, dtype=np.float32)
    else:
        rim_mm = float(rng.uniform(1.0, 3.0)) if pattern == "ring" else float(rng.uniform(0.25, 0.45)) * radius
        rim_mm = min(rim_mm, 0.45 * radius)
        core = np.clip((1.0 - rim_mm / radius - radial) / 0.08, 0.0, 1.0)  # soft inner edge of the rim
        centre_level = t1_grey * (0.85 if pattern == "ring" else float(rng.uniform(0.45, 0.65)))
        t1_level = (enhancing * (1.0 - core) + centre_level * core).astype(np.float32)
    # Enhancement is never perfectly even: a smooth +-10 % texture (a few mm across).
    texture = ndimage.gaussian_filter(rng.normal(size=fraction.shape), 1.5)
    t1_level = (t1_level * (1.0 + 0.1 * texture / max(float(texture.std()), 1e-6))).astype(np.float32)
    flair_level = flair_white * float(rng.uniform(1.1, 1.5))
    flair_lesion = np.full(fraction.shape, flair_level, dtype=np.float32)
    if pattern == "necrotic":  # necrosis is fluid: bright on FLAIR where it is not suppressed
        flair_lesion = np.where(radial < 0.5, flair_white * 1.7, flair_level).astype(np.float32)
    if spec.haemorrhagic:
        # A blood-filled centre: bright on T1 regardless of enhancement, dark (haemosiderin) on FLAIR.
        blood = radial < float(rng.uniform(0.5, 0.85))
        t1_level = np.where(blood, t1_white * 1.6, t1_level).astype(np.float32)
        flair_lesion = np.where(blood, flair_white * 0.55, flair_lesion).astype(np.float32)
    t1ce[...] = t1ce * (1.0 - fraction) + t1_level * fraction
    flair[...] = flair * (1.0 - fraction) + flair_lesion * fraction


def _oedema(lesion: BoolArray, reach_mm: float, spacing: npt.NDArray[np.float64], allowed: BoolArray,
            rng: np.random.Generator) -> BoolArray:
    """Vasogenic oedema: the white matter within a jagged ``reach_mm`` of the lesion, grown through white
    matter only (geodesically), so it fingers along the white matter and spares the cortex."""
    to_lesion = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    bumps = ndimage.gaussian_filter(rng.normal(size=lesion.shape), 2.0 / spacing)
    jagged = reach_mm * (1.0 + 0.35 * bumps / max(float(bumps.std()), 1e-6))
    near = (to_lesion <= np.clip(jagged, 0.3 * reach_mm, 1.6 * reach_mm)) & allowed
    labels, _ = ndimage.label(near | lesion)
    keep = np.unique(labels[lesion])
    return np.isin(labels, keep[keep > 0]) & ~lesion


def _rician(image: FloatArray, sigma: float, rng: np.random.Generator) -> FloatArray:
    return np.hypot(image + rng.normal(0.0, sigma, image.shape), rng.normal(0.0, sigma, image.shape)).astype(
        np.float32)


@dataclass
class FollowUpPair:
    """Two visits of one patient with metastases kept in place between them (each drawn again where it was, at
    its size then) and the patient moved at the follow-up. ``motion`` maps follow-up points to the prior's;
    ``expected`` names each lesion (as the caller did) with its centre at the prior and at the follow-up (LPS mm)
    and its sizes (prior, follow-up; 0 = absent)."""

    prior: SyntheticMetastases
    followup_t1ce: Volume
    followup_flair: Volume
    followup_labels: Volume  # the follow-up's lesion numbers, moved with the patient
    motion: sitk.Euler3DTransform
    expected: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float]]]


def metastases_followup_pair(background: Background, lesions: dict[str, tuple[float, float]], *, seed: int = 0,
                             rotation_deg: float = 3.0, shift_mm: tuple[float, float, float] = (4.0, -3.0, 0.0),
                             noise: float = 0.0) -> FollowUpPair:
    """A prior and a follow-up of ``lesions`` (name -> (prior, follow-up) diameter in mm; 0: absent then, so
    (0, d) is new and (d, 0) resolved). Every lesion is placed once at its larger size (so none touches another
    at either visit), then drawn at each visit at that visit's size; the follow-up is then rotated by
    ``rotation_deg`` about the patient's z axis through the volume's centre and shifted by ``shift_mm``."""
    names = list(lesions)
    layout = insert_metastases(background, [MetastasisSpec(max(lesions[n])) for n in names], seed=seed)
    # The layout numbers lesions largest first: each name takes a place drawn at its size (names of equal size
    # share their places out; the places are arbitrary anyway).
    at: dict[str, tuple[float, float, float]] = {}
    for truth in layout.truth:
        name = next(n for n in names if max(lesions[n]) == truth.spec.diameter_mm and n not in at)
        at[name] = truth.centroid_mm
    visits = [insert_metastases(background, [MetastasisSpec(lesions[n][v], at_mm=at[n]) for n in names
                                             if lesions[n][v] > 0], seed=seed + 1 + v, noise=noise) for v in (0, 1)]
    geometry = background.t1ce.geometry
    centre = geometry.index_to_patient() @ np.array([*(np.asarray(geometry.size, dtype=np.float64) - 1) / 2, 1.0])
    motion = sitk.Euler3DTransform()
    motion.SetCenter(tuple(float(v) for v in centre[:3]))
    motion.SetRotation(0.0, 0.0, math.radians(rotation_deg))
    motion.SetTranslation(shift_mm)
    inverse = motion.GetInverse()
    follow = visits[1]

    def moved(volume: Volume, interpolator: int) -> Volume:
        return resample(volume, geometry, motion, interpolator=interpolator)

    expected = {n: (at[n], _triple(inverse.TransformPoint(at[n])), lesions[n]) for n in names}
    return FollowUpPair(visits[0], moved(follow.t1ce, sitk.sitkLinear), moved(follow.flair, sitk.sitkLinear),
                        moved(follow.labels, sitk.sitkNearestNeighbor), motion, expected)


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    return float(values[0]), float(values[1]), float(values[2])
