"""Longitudinal test pairs made from real anatomy, with known truth.

No labelled longitudinal data exist here, so a pair is made from one real brain: the baseline is the
real image; the follow-up is the same anatomy after a known rigid motion, intensity drift and noise,
with lesions of known size and position inserted. Two kinds:

* MS: a FLAIR (or a FLAIR-like image made from a T1 such as Colin27) with new MS-like lesions at
  follow-up (ovoid, in periventricular, juxtacortical or deep white matter, FLAIR-bright with a soft,
  partial-volume edge), plus stable lesions present at both timepoints and lesions that enlarge.
* Haematoma: a CT in Hounsfield units made from the anatomy (skull, CSF, grey and white matter), with
  an irregular haematoma of known volume that grows, or does not, at follow-up.

Truth is in DICOM patient coordinates (LPS, mm) on the follow-up's grid, volumes in mm³ and mL. The
motion moves the patient inside the scanner: both timepoints share one grid, as a re-scan does."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from neuroflow.core.volume import Volume, resample
from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.longitudinal.haematoma import is_expansion

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]
MRICRON_TEMPLATES = Path("/usr/share/mricron/templates")
COLIN27_T1 = MRICRON_TEMPLATES / "ch2.nii.gz"
COLIN27_BRAIN = MRICRON_TEMPLATES / "ch2bet.nii.gz"
# The team's shared real-data folder beside the repository, or NEUROFLOW_SHARED_DATA (a git worktree elsewhere).
SHARED_DATA = Path(os.environ.get("NEUROFLOW_SHARED_DATA", REPOSITORY_ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class Brain:
    """One real brain to make pairs from: a FLAIR (or FLAIR-like) image and a T1 on the same grid."""

    name: str
    flair: Volume
    t1: Volume
    brain_mask: Volume  # uint8, 1 = brain


def real_brains() -> list[Brain]:
    """The real brains this checkout has: Colin27 (FLAIR-like from its T1), the two glioma cases in
    tests/data and, where the shared data folder is present, the AURORA metastasis case."""
    brains = [colin27()]
    data = REPOSITORY_ROOT / "tests" / "data"
    brains.append(_stripped_case("tcga-du-7294", data / "glioma-tcga-du-7294" / "fla_bet.nii.gz",
                                 data / "glioma-tcga-du-7294" / "t1_bet.nii.gz"))
    brains.append(_stripped_case("brats-gli-00001", data / "glioma-brats-gli-00001-000" / "t2f.nii.gz",
                                 data / "glioma-brats-gli-00001-000" / "t1n.nii.gz"))
    aurora = SHARED_DATA / "metastasis-aurora"
    if (aurora / "flair.nii.gz").is_file():
        brains.append(_stripped_case("aurora-metastasis", aurora / "flair.nii.gz", aurora / "t1.nii.gz"))
    return brains


def colin27() -> Brain:
    """Colin27 (Debian mricron-data): whole-head T1 with skull; the FLAIR is made from it."""
    t1 = load_volume(COLIN27_T1)
    mask = load_volume(COLIN27_BRAIN).array > 0
    mask = ndimage.binary_fill_holes(ndimage.binary_closing(mask, iterations=2))
    flair = flair_from_t1(t1, mask)
    return Brain("colin27", flair, t1.with_array(t1.array.astype(np.float32)),
                 t1.with_array(mask.astype(np.uint8)))


def _stripped_case(name: str, flair_path: Path, t1_path: Path) -> Brain:
    flair = load_volume(flair_path)
    t1 = load_volume(t1_path)
    mask = ndimage.binary_fill_holes(flair.array > 0) & ndimage.binary_fill_holes(t1.array > 0)
    return Brain(name, flair.with_array(np.clip(flair.array, 0, None).astype(np.float32)),
                 t1.with_array(np.clip(t1.array, 0, None).astype(np.float32)),
                 flair.with_array(mask.astype(np.uint8)))


# ----------------------------------------------------------------------------------------------------
# Tissue classes


@dataclass(frozen=True)
class Tissues:
    """Boolean maps of CSF, grey and white matter inside the brain, from a T1 by three-class k-means."""

    csf: BoolArray
    grey: BoolArray
    white: BoolArray


def tissues_from_t1(t1: Volume, brain_mask: BoolArray) -> Tissues:
    """CSF < grey < white matter on T1: three-class k-means of the brain's intensities."""
    values = t1.array[brain_mask].astype(np.float64)
    centres = np.percentile(values, [10.0, 50.0, 90.0])
    for _ in range(20):
        assign = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        updated = np.array([values[assign == c].mean() if np.any(assign == c) else centres[c] for c in range(3)])
        if np.allclose(updated, centres):
            break
        centres = updated
    cut_low = (centres[0] + centres[1]) / 2.0
    cut_high = (centres[1] + centres[2]) / 2.0
    image = t1.array
    return Tissues(csf=brain_mask & (image < cut_low),
                   grey=brain_mask & (image >= cut_low) & (image < cut_high),
                   white=brain_mask & (image >= cut_high))


def flair_from_t1(t1: Volume, brain_mask: BoolArray) -> Volume:
    """A FLAIR-like image from a T1: CSF dark, grey matter brighter than white matter, skull and scalp
    dim, keeping the T1's partial-volume texture (a piecewise-linear map of T1 intensity)."""
    values = t1.array[brain_mask].astype(np.float64)
    tissues = tissues_from_t1(t1, brain_mask)
    csf = float(np.median(t1.array[tissues.csf]))
    grey = float(np.median(t1.array[tissues.grey]))
    white = float(np.median(t1.array[tissues.white]))
    top = float(np.percentile(values, 99.9))
    # T1 intensity -> FLAIR intensity: CSF 60, grey 400, white 300 (typical FLAIR ratios GM/WM ~1.3).
    flair = np.interp(t1.array.astype(np.float64), [0.0, csf, grey, white, max(top, white + 1.0)],
                      [0.0, 60.0, 400.0, 300.0, 290.0])
    outside = ~brain_mask
    flair[outside] = 0.4 * flair[outside]  # scalp and skull darker than brain on FLAIR
    return t1.with_array(flair.astype(np.float32))


# ----------------------------------------------------------------------------------------------------
# Follow-up: rigid motion, intensity drift, noise


@dataclass(frozen=True)
class Motion:
    """A rigid motion of the patient between the scans: rotations about x, y, z (degrees, about the
    brain's centre) and a translation (mm, LPS)."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]

    @classmethod
    def random(cls, rng: np.random.Generator, max_deg: float = 4.0, max_mm: float = 5.0) -> Motion:
        r = rng.uniform(-max_deg, max_deg, 3)
        t = rng.uniform(-max_mm, max_mm, 3)
        return cls((float(r[0]), float(r[1]), float(r[2])), (float(t[0]), float(t[1]), float(t[2])))

    def transform(self, centre_mm: tuple[float, float, float]) -> sitk.Euler3DTransform:
        """Maps follow-up points to baseline points (the resampling direction)."""
        euler = sitk.Euler3DTransform()
        euler.SetCenter(centre_mm)
        euler.SetRotation(*(math.radians(a) for a in self.rotation_deg))
        euler.SetTranslation(self.translation_mm)
        return euler


@dataclass(frozen=True)
class Drift:
    """Intensity change between scans: global scale and offset (fraction of white matter), a smooth
    multiplicative bias field of this amplitude, and Rician noise with this sigma (fraction of WM)."""

    scale: float = 1.1
    offset: float = 0.02
    bias_amplitude: float = 0.08
    noise: float = 0.03


def _follow_up_image(image: FloatArray, volume: Volume, motion_tf: sitk.Transform, drift: Drift,
                     reference_level: float, rng: np.random.Generator, *, rician: bool) -> FloatArray:
    moved = resample(volume.with_array(image), volume.geometry, motion_tf).array.astype(np.float32)
    bias = _bias_field(moved.shape, drift.bias_amplitude, rng)
    drifted = (drift.scale * moved + drift.offset * reference_level * (moved > 0)) * bias
    sigma = drift.noise * reference_level
    if sigma <= 0:
        return drifted.astype(np.float32)
    if rician:
        noisy = np.hypot(drifted + rng.normal(0.0, sigma, drifted.shape), rng.normal(0.0, sigma, drifted.shape))
    else:
        noisy = drifted + rng.normal(0.0, sigma, drifted.shape)
    return noisy.astype(np.float32)


def _bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> FloatArray:
    """exp of a random smooth (first and second order) polynomial, spanning about ±amplitude."""
    grids = np.meshgrid(*[np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape], indexing="ij")
    terms = [*grids, grids[0] * grids[1], grids[1] * grids[2], grids[0] ** 2 - 0.33, grids[2] ** 2 - 0.33]
    weights = rng.normal(0.0, 1.0, len(terms))
    field_ = sum(float(w) * t for w, t in zip(weights, terms, strict=True))
    span = float(np.abs(field_).max()) or 1.0
    return np.exp(np.float32(amplitude) * field_ / np.float32(span)).astype(np.float32)


def _brain_centre(volume: Volume, mask: BoolArray) -> tuple[float, float, float]:
    k, j, i = (float(c) for c in ndimage.center_of_mass(mask))
    x, y, z, _ = volume.geometry.index_to_patient() @ np.array([i, j, k, 1.0])
    return float(x), float(y), float(z)


# ----------------------------------------------------------------------------------------------------
# MS pairs

LesionKind = Literal["new", "enlarging", "stable"]
LesionSite = Literal["periventricular", "juxtacortical", "deep"]
# On FLAIR, CSF is nulled: below this fraction of white matter's median a voxel is CSF (or its partial volume).
CSF_FLAIR_FRACTION = 0.6


@dataclass(frozen=True)
class LesionTruth:
    """One inserted lesion: centroid (patient LPS mm, on the follow-up) and volume at follow-up (mm³).
    ``kind``: new at follow-up, enlarging (present at baseline with ``baseline_volume_mm3``), or stable
    (identical at both timepoints: a detector must NOT report it)."""

    centroid_mm: tuple[float, float, float]
    volume_mm3: float
    kind: LesionKind
    site: LesionSite
    baseline_volume_mm3: float = 0.0


@dataclass
class MsPair:
    """Baseline and follow-up FLAIR (same grid) and what was done to make the follow-up."""

    baseline: Volume
    followup: Volume
    truth: list[LesionTruth]
    motion: Motion
    drift: Drift
    brain: str
    baseline_t1: Volume | None = None
    followup_t1: Volume | None = None

    @property
    def detectable(self) -> list[LesionTruth]:
        """The lesions a detector should report (new and enlarging)."""
        return [t for t in self.truth if t.kind != "stable"]


@dataclass(frozen=True)
class _Placement:
    centre_index: tuple[float, float, float]  # (k, j, i), fractional
    site: LesionSite


def make_ms_pair(
    brain: Brain,
    *,
    new_volumes_mm3: tuple[float, ...] = (12.0, 20.0, 40.0, 80.0, 150.0, 300.0, 500.0),
    enlarging: tuple[tuple[float, float], ...] = ((60.0, 160.0),),
    stable_volumes_mm3: tuple[float, ...] = (50.0, 120.0),
    motion: Motion | None = None,
    drift: Drift | None = None,
    contrast: tuple[float, float] = (1.5, 1.8),
    seed: int = 0,
) -> MsPair:
    """An MS pair from ``brain``: the baseline FLAIR with stable (and to-enlarge) lesions, the follow-up
    with new lesions of ``new_volumes_mm3``, the enlarging ones grown from the first to the second
    volume of each ``enlarging`` entry, then moved by ``motion`` (random if None: up to 4°, 5 mm),
    drifted and made noisy by ``drift``. Lesion intensity is ``contrast`` (range) times the white matter's
    median. Lesions go into white matter (periventricular, juxtacortical or deep, in turn), at least
    8 mm apart, away from hyperintense pathology already there (a tumour and its oedema)."""
    rng = np.random.default_rng(seed)
    motion = motion or Motion.random(rng)
    drift = drift or Drift()
    mask = brain.brain_mask.array > 0
    tissues = tissues_from_t1(brain.t1, mask)
    flair = brain.flair.array.astype(np.float32)
    white_level = float(np.median(flair[tissues.white]))
    allowed = _lesion_sites(flair, mask, tissues, white_level)

    spacing = np.array(brain.flair.geometry.spacing[::-1])  # (k, j, i) mm
    # A demyelinating lesion is parenchyma turned bright: it pushes into no ventricle or sulcus, whose CSF stays
    # dark at its border. Painted over CSF, a large periventricular ellipsoid filled part of a ventricle, which
    # no real lesion does (and which the detector rightly drops as CSF turned bright). CSF by either contrast: the
    # T1 classes miss part of the ventricles in some brains (AURORA).
    parenchyma = (mask & ~tissues.csf & (flair >= CSF_FLAIR_FRACTION * white_level)).astype(np.float32)
    volumes: list[tuple[float, float, LesionKind]] = (
        [(v, v, "stable") for v in stable_volumes_mm3]
        + [(a, b, "enlarging") for a, b in enlarging]
        + [(0.0, v, "new") for v in new_volumes_mm3]
    )
    taken: list[npt.NDArray[np.float64]] = []
    base_image = flair.copy()
    follow_image = flair.copy()
    placed: list[tuple[tuple[float, ...], LesionSite, float, float, LesionKind]] = []
    sites: tuple[LesionSite, ...] = ("periventricular", "juxtacortical", "deep")
    for n, (v_base, v_follow, kind) in enumerate(volumes):
        site = sites[n % 3]
        placement = _place(allowed[site], spacing, taken, _radius_mm(v_follow), rng, site)
        if placement is None:
            placement = _place(allowed["deep"], spacing, taken, _radius_mm(v_follow), rng, "deep")
        if placement is None:
            raise ValueError(f"{brain.name}: no room left for a {v_follow:g} mm³ lesion")
        taken.append(np.array(placement.centre_index) * spacing)
        level = white_level * float(rng.uniform(*contrast))
        axes = _ellipsoid_axes(rng)
        rotation = _random_rotation(rng)
        if v_base > 0:
            frac = _ellipsoid_fraction(flair.shape, spacing, placement.centre_index, v_base, axes, rotation)
            frac, v_base = _in_parenchyma(frac, parenchyma, v_base)
            base_image = _paint(base_image, frac, level)
        frac = _ellipsoid_fraction(flair.shape, spacing, placement.centre_index, v_follow, axes, rotation)
        nominal = v_follow
        frac, v_follow = _in_parenchyma(frac, parenchyma, v_follow)
        follow_image = _paint(follow_image, frac, level)
        # A lesion cut by CSF is centred on what was painted, not on its ellipsoid.
        centre_index = (placement.centre_index if v_follow == nominal
                        else tuple(float(c) for c in ndimage.center_of_mass(frac)))
        placed.append((centre_index, placement.site, v_base, v_follow, kind))

    centre = _brain_centre(brain.flair, mask)
    tf = motion.transform(centre)
    follow = _follow_up_image(follow_image, brain.flair, tf, drift, white_level, rng, rician=True)
    inverse = tf.GetInverse()
    affine = brain.flair.geometry.index_to_patient()
    truth: list[LesionTruth] = []
    for (k, j, i), site, v_base, v_follow, kind in placed:
        baseline_point = affine @ np.array([i, j, k, 1.0])
        x, y, z = inverse.TransformPoint(tuple(float(c) for c in baseline_point[:3]))
        truth.append(LesionTruth((float(x), float(y), float(z)), v_follow, kind, site, v_base))
    base_t1 = brain.t1
    follow_t1 = brain.t1.with_array(
        _follow_up_image(brain.t1.array.astype(np.float32), brain.t1, tf, drift,
                         float(np.median(brain.t1.array[tissues.white])), rng, rician=True))
    meta = {"pair": f"{brain.name} seed {seed}"}
    return MsPair(
        baseline=brain.flair.with_array(base_image),
        followup=Volume(follow, brain.flair.geometry, {**brain.flair.meta, **meta}),
        truth=truth, motion=motion, drift=drift, brain=brain.name,
        baseline_t1=base_t1, followup_t1=follow_t1,
    )


def _lesion_sites(flair: FloatArray, mask: BoolArray, tissues: Tissues,
                  white_level: float) -> dict[LesionSite, BoolArray]:
    """Where lesion centres may go: white matter away from pre-existing hyperintense pathology, split by
    distance to the ventricles (periventricular), to the cortex (juxtacortical) or to both (deep)."""
    white = ndimage.binary_opening(tissues.white, iterations=1)
    # Pre-existing pathology (tumour, oedema): large FLAIR-bright components, kept 15 mm away.
    bright = mask & (flair > 1.6 * white_level)
    labels, count = ndimage.label(bright)
    if count:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        pathology = np.isin(labels, np.flatnonzero(sizes > 500))
        white &= ~ndimage.binary_dilation(pathology, iterations=15)
    inner = ndimage.binary_erosion(mask, iterations=12)  # ventricles: CSF deep inside the brain
    ventricles = tissues.csf & inner
    labels, count = ndimage.label(ventricles)
    if count:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        ventricles = np.isin(labels, np.flatnonzero(sizes > 300))
    to_ventricle = ndimage.distance_transform_edt(~ventricles) if ventricles.any() else np.full(mask.shape, 99.0)
    to_grey = ndimage.distance_transform_edt(~tissues.grey)
    to_edge = ndimage.distance_transform_edt(mask)
    core = white & (to_edge > 8)
    return {
        "periventricular": core & (to_ventricle >= 4) & (to_ventricle <= 8),
        "juxtacortical": core & (to_grey >= 3) & (to_grey <= 5) & (to_ventricle > 10),
        "deep": core & (to_grey >= 5) & (to_ventricle > 10),
    }


def _radius_mm(volume_mm3: float) -> float:
    return float((3.0 * volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0))


def _place(allowed: BoolArray, spacing: npt.NDArray[np.float64], taken: list[npt.NDArray[np.float64]],
           radius_mm: float, rng: np.random.Generator, site: LesionSite) -> _Placement | None:
    """A random allowed voxel at least 8 mm (plus both radii, up to 8 mm each) from every lesion placed."""
    candidates = np.argwhere(allowed)
    if candidates.size == 0:
        return None
    for _ in range(200):
        index = candidates[int(rng.integers(len(candidates)))]
        position = index * spacing
        if all(float(np.linalg.norm(position - t)) > 8.0 + 2.0 * min(radius_mm, 8.0) + 8.0 for t in taken):
            return _Placement((float(index[0]), float(index[1]), float(index[2])), site)
    return None


def _ellipsoid_axes(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Relative semi-axes of an ovoid lesion (elongation up to ~1.8), product 1."""
    axes = np.array([rng.uniform(1.0, 1.8), rng.uniform(0.8, 1.2), 1.0])
    return np.asarray(axes / np.prod(axes) ** (1.0 / 3.0), dtype=np.float64)


def _random_rotation(rng: np.random.Generator) -> npt.NDArray[np.float64]:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return np.asarray(q * np.sign(np.diag(r)), dtype=np.float64)


def _ellipsoid_fraction(shape: tuple[int, ...], spacing: npt.NDArray[np.float64],
                        centre_index: tuple[float, float, float], volume_mm3: float,
                        axes: npt.NDArray[np.float64], rotation: npt.NDArray[np.float64],
                        supersample: int = 4) -> FloatArray:
    """The fraction of each voxel inside an ellipsoid of ``volume_mm3`` (partial volume, by
    supersampling each voxel ``supersample``³ times), smoothed by 0.5 mm for a soft edge."""
    radius = _radius_mm(volume_mm3)
    semi = radius * axes
    reach = float(semi.max()) + 2.0
    centre = np.array(centre_index)
    lo = np.maximum(np.floor(centre - reach / spacing).astype(int) - 1, 0)
    hi = np.minimum(np.ceil(centre + reach / spacing).astype(int) + 2, np.array(shape))
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    grids = [np.add.outer(np.arange(a, b), offsets).ravel() for a, b in zip(lo, hi, strict=True)]
    kk, jj, ii = np.meshgrid(*grids, indexing="ij")
    points = np.stack([(kk - centre[0]) * spacing[0], (jj - centre[1]) * spacing[1], (ii - centre[2]) * spacing[2]],
                      axis=-1)
    local = points @ rotation
    inside = (((local / semi) ** 2).sum(axis=-1) <= 1.0).astype(np.float32)
    n = [b - a for a, b in zip(lo, hi, strict=True)]
    frac = inside.reshape(n[0], supersample, n[1], supersample, n[2], supersample).mean(axis=(1, 3, 5))
    frac = ndimage.gaussian_filter(frac, sigma=0.5 / spacing)
    full = np.zeros(shape, dtype=np.float32)
    full[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = frac
    return full


def _in_parenchyma(fraction: FloatArray, parenchyma: FloatArray, volume_mm3: float) -> tuple[FloatArray, float]:
    """The lesion's fraction outside CSF, and its volume scaled by the share kept (the truth volume is what was
    painted; a lesion clear of CSF keeps its nominal volume exactly)."""
    kept = fraction * parenchyma
    share = float(kept.sum()) / max(float(fraction.sum()), 1e-6)
    return kept.astype(np.float32), volume_mm3 * share


def _paint(image: FloatArray, fraction: FloatArray, level: float) -> FloatArray:
    """Mix ``level`` into ``image`` by ``fraction``; never darken (a lesion onto a lesion keeps the max)."""
    painted: FloatArray = np.maximum(image, image * (1.0 - fraction) + np.float32(level) * fraction)
    return painted.astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# CT and haematoma pairs

# Hounsfield units of the classes (typical adult values).
HU_AIR = -1000.0
HU_SCALP = 30.0
HU_BONE = (700.0, 1500.0)  # diploe ... cortical tables
HU_CSF = 8.0
HU_GREY = 38.0
HU_WHITE = 28.0
HU_OEDEMA = 18.0
CT_NOISE_HU = 4.0


def ct_from_anatomy(brain: Brain, *, seed: int = 0, noise_hu: float = CT_NOISE_HU) -> Volume:
    """A non-contrast head CT in HU from the anatomy: grey/white matter and CSF from the T1's tissue
    classes (with the T1's partial volume carried into HU), a CSF rim, a skull of cortical tables and
    diploe (~700-1500 HU, 6 mm), scalp, air outside; Gaussian noise of ``noise_hu``. The skull is built
    around the brain mask, so stripped and unstripped brains give the same kind of CT."""
    rng = np.random.default_rng(seed)
    mask = brain.brain_mask.array > 0
    tissues = tissues_from_t1(brain.t1, mask)
    t1 = brain.t1.array.astype(np.float64)
    csf_level = float(np.median(t1[tissues.csf]))
    grey_level = float(np.median(t1[tissues.grey]))
    white_level = float(np.median(t1[tissues.white]))
    hu = np.interp(t1, [csf_level, grey_level, white_level], [HU_CSF, HU_GREY, HU_WHITE])
    spacing = np.array(brain.t1.geometry.spacing[::-1])
    distance_out = ndimage.distance_transform_edt(~mask, sampling=spacing)
    volume = np.full(mask.shape, HU_AIR, dtype=np.float64)
    volume[mask] = hu[mask]
    rim = (distance_out > 0) & (distance_out <= 2.0)
    volume[rim] = HU_CSF
    bone = (distance_out > 2.0) & (distance_out <= 8.0)
    depth = (distance_out - 2.0) / 6.0  # 0 inner table ... 1 outer table
    tables = np.clip(np.abs(depth - 0.5) * 2.0, 0.0, 1.0)  # 1 at the tables, 0 in the diploe
    volume[bone] = (HU_BONE[0] + (HU_BONE[1] - HU_BONE[0]) * tables)[bone]
    scalp = (distance_out > 8.0) & (distance_out <= 13.0)
    volume[scalp] = HU_SCALP
    # The head's partial volume at the scalp surface, then noise everywhere (CT noise is not Rician).
    volume = ndimage.gaussian_filter(volume, sigma=0.5)
    volume += rng.normal(0.0, noise_hu, volume.shape)
    return Volume(volume.astype(np.float32), brain.t1.geometry, {"source": f"CT from {brain.name}"})


@dataclass(frozen=True)
class HaematomaTruth:
    """The inserted haematoma at each timepoint: volumes (mL) and centroids (patient LPS mm, each on its
    own scan), and whether the change is an expansion (>= 6 mL or >= 33 %)."""

    baseline_ml: float
    followup_ml: float
    baseline_centroid_mm: tuple[float, float, float]
    followup_centroid_mm: tuple[float, float, float]
    centroid_shift_mm: float  # between the two centroids in one frame (the baseline's)

    @property
    def change_ml(self) -> float:
        return self.followup_ml - self.baseline_ml

    @property
    def expansion(self) -> bool:
        return is_expansion(self.baseline_ml, self.followup_ml)


@dataclass
class HaematomaPair:
    """Baseline and follow-up CT (HU, same grid), the truth, and the clot masks that were inserted."""

    baseline: Volume
    followup: Volume
    truth: HaematomaTruth
    motion: Motion
    brain: str
    baseline_mask: Volume = field(repr=False)  # uint8: the clot on the baseline grid
    followup_mask: Volume = field(repr=False)  # uint8: the clot on the follow-up grid (after the motion)


def make_haematoma_pair(
    brain: Brain,
    *,
    baseline_ml: float = 20.0,
    followup_ml: float = 30.0,
    motion: Motion | None = None,
    oedema_mm: float = 3.0,
    seed: int = 0,
    ct: Volume | None = None,
) -> HaematomaPair:
    """A haematoma pair from ``brain``'s CT (``ct_from_anatomy`` unless given): an irregular clot of
    ``baseline_ml`` (55-80 HU) deep in one hemisphere, grown (or shrunk) in the same place to
    ``followup_ml`` with a perihaematomal oedema rim of ``oedema_mm`` at follow-up, the follow-up moved
    by ``motion`` (random if None) with fresh noise. Volumes are counted on the voxel grid (the clot is
    the set of voxels whose blob function is inside), so truth is exact for the grid."""
    rng = np.random.default_rng(seed)
    ct = ct if ct is not None else ct_from_anatomy(brain, seed=seed)
    motion = motion or Motion.random(rng)
    mask = brain.brain_mask.array > 0
    spacing = np.array(ct.geometry.spacing[::-1])
    to_edge = ndimage.distance_transform_edt(mask, sampling=spacing)
    radius = _radius_mm(max(baseline_ml, followup_ml) * 1000.0)
    room = to_edge > radius * 1.3 + 5.0
    # One hemisphere (x in patient coordinates away from the midline).
    centre = _brain_centre(ct, mask)
    kk, jj, ii = np.nonzero(room)
    points = ct.geometry.index_to_patient() @ np.stack([ii, jj, kk, np.ones_like(ii)]).astype(np.float64)
    lateral = np.abs(points[0] - centre[0]) > 15.0
    if not lateral.any():
        lateral = np.ones_like(lateral)
    pick = int(rng.choice(np.flatnonzero(lateral)))
    centre_index = np.array([kk[pick], jj[pick], ii[pick]], dtype=np.float64)
    shape_field = _blob_field(ct.array.shape, spacing, centre_index, rng)
    base_mask = _blob_of_volume(shape_field, baseline_ml * 1000.0 / float(np.prod(spacing)))
    follow_mask = _blob_of_volume(shape_field, followup_ml * 1000.0 / float(np.prod(spacing)))
    clot_hu = float(rng.uniform(60.0, 75.0))
    base_ct = _insert_clot(ct.array, base_mask, clot_hu, rng, oedema_voxels=None)
    rim = (ndimage.distance_transform_edt(~follow_mask, sampling=spacing) <= oedema_mm) & ~follow_mask & mask
    follow_ct = _insert_clot(ct.array, follow_mask, clot_hu, rng, oedema_voxels=rim)

    tf = motion.transform(centre)
    noise_free = resample(ct.with_array(follow_ct), ct.geometry, tf, default=HU_AIR).array
    follow = noise_free + rng.normal(0.0, CT_NOISE_HU / 2.0, noise_free.shape)
    moved_mask = resample(ct.with_array(follow_mask.astype(np.float32)), ct.geometry, tf).array > 0.5

    affine = ct.geometry.index_to_patient()

    def centroid(m: BoolArray) -> tuple[float, float, float]:
        k, j, i = ndimage.center_of_mass(m)
        p = affine @ np.array([i, j, k, 1.0])
        return float(p[0]), float(p[1]), float(p[2])

    base_c = centroid(base_mask)
    follow_in_base = centroid(follow_mask)
    x, y, z = tf.GetInverse().TransformPoint(follow_in_base)
    truth = HaematomaTruth(
        baseline_ml=float(base_mask.sum() * np.prod(spacing) / 1000.0),
        followup_ml=float(follow_mask.sum() * np.prod(spacing) / 1000.0),
        baseline_centroid_mm=base_c,
        followup_centroid_mm=(float(x), float(y), float(z)),
        centroid_shift_mm=float(np.linalg.norm(np.subtract(follow_in_base, base_c))),
    )
    return HaematomaPair(
        baseline=ct.with_array(base_ct.astype(np.float32)),
        followup=ct.with_array(follow.astype(np.float32)),
        truth=truth, motion=motion, brain=brain.name,
        baseline_mask=ct.with_array(base_mask.astype(np.uint8)),
        followup_mask=ct.with_array(moved_mask.astype(np.uint8)),
    )


def _blob_field(shape: tuple[int, ...], spacing: npt.NDArray[np.float64], centre: npt.NDArray[np.float64],
                rng: np.random.Generator) -> FloatArray:
    """An irregular, elongated blob's level function: ellipsoidal distance from ``centre`` (axes ratio up
    to 1:1.6, random orientation) perturbed by smooth noise (about ±20 %); lower = more inside."""
    axes = np.array([rng.uniform(1.0, 1.6), rng.uniform(0.9, 1.2), 1.0])
    rotation = _random_rotation(rng)
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing, strict=True)],
                        indexing="ij", sparse=False)
    points = np.stack(grids, axis=-1).astype(np.float32) @ rotation.astype(np.float32)
    distance = np.sqrt(((points / axes.astype(np.float32)) ** 2).sum(axis=-1))
    noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape).astype(np.float32), sigma=6.0 / spacing)
    noise /= 2.0 * (float(noise.std()) or 1.0)  # about ±1 over most of the volume
    level: FloatArray = (distance * (1.0 + 0.2 * np.clip(noise, -1.5, 1.5))).astype(np.float32)
    return level


def _blob_of_volume(level: FloatArray, voxels: float) -> BoolArray:
    """The ``voxels`` voxels of lowest level: a blob of exactly that size (one component: the level
    rises monotonically enough away from the centre)."""
    n = max(1, round(voxels))
    threshold = np.partition(level.ravel(), n - 1)[n - 1]
    blob = level <= threshold
    labels, count = ndimage.label(blob)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        blob = labels == int(np.argmax(sizes))
    return np.asarray(blob)


def _insert_clot(ct: FloatArray, clot: BoolArray, clot_hu: float, rng: np.random.Generator,
                 oedema_voxels: BoolArray | None) -> FloatArray:
    """The CT with the clot (``clot_hu`` ± a little texture) and, if given, a hypodense oedema rim."""
    out = np.array(ct, dtype=np.float32, copy=True)
    if oedema_voxels is not None:
        out[oedema_voxels] = HU_OEDEMA + rng.normal(0.0, 2.0, int(oedema_voxels.sum()))
    texture = ndimage.gaussian_filter(rng.normal(0.0, 4.0, ct.shape).astype(np.float32), 1.0)
    out[clot] = clot_hu + texture[clot] * 2.0
    return out


# ----------------------------------------------------------------------------------------------------
# Scoring a detector against the truth (the bench and the tests share it)


@dataclass(frozen=True)
class Detection:
    """What a detector reported for one lesion: centroid (patient LPS mm on the follow-up) and volume."""

    centroid_mm: tuple[float, float, float]
    volume_mm3: float


@dataclass(frozen=True)
class LesionHit:
    truth: LesionTruth
    detection: Detection

    @property
    def centroid_error_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.detection.centroid_mm, self.truth.centroid_mm)))

    @property
    def volume_error_pct(self) -> float:
        """Against the new tissue: the whole lesion if new, what was added if enlarging."""
        expected = self.truth.volume_mm3 - self.truth.baseline_volume_mm3
        return 100.0 * (self.detection.volume_mm3 - expected) / expected


@dataclass
class LesionScore:
    """One case's lesion-wise result: hits, the detectable lesions missed, and false positives (detections
    matching no new or enlarging lesion, a stable lesion included)."""

    hits: list[LesionHit]
    missed: list[LesionTruth]
    false_positives: list[Detection]

    @property
    def sensitivity(self) -> float:
        total = len(self.hits) + len(self.missed)
        return len(self.hits) / total if total else 1.0


def score_lesions(truth: list[LesionTruth], detections: list[Detection]) -> LesionScore:
    """Match detections to inserted lesions, nearest first: a detection finds a lesion when its centroid
    lies within the lesion's equivalent radius plus 3 mm of the true centroid."""
    pairs = sorted(
        ((float(np.linalg.norm(np.subtract(d.centroid_mm, t.centroid_mm))), n, m)
         for n, t in enumerate(truth) for m, d in enumerate(detections)),
        key=lambda p: p[0])
    truth_used: set[int] = set()
    detection_used: set[int] = set()
    hits: list[LesionHit] = []
    for distance, n, m in pairs:
        if n in truth_used or m in detection_used or distance > _radius_mm(truth[n].volume_mm3) + 3.0:
            continue
        if truth[n].kind == "stable":
            continue  # a detection on a stable lesion stays unmatched: a false positive
        truth_used.add(n)
        detection_used.add(m)
        hits.append(LesionHit(truth[n], detections[m]))
    missed = [t for n, t in enumerate(truth) if n not in truth_used and t.kind != "stable"]
    false_positives = [d for m, d in enumerate(detections) if m not in detection_used]
    return LesionScore(hits, missed, false_positives)
