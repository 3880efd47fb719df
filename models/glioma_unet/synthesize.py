"""Synthetic glioma training cases: healthy template brains with an inserted tumour, four contrasts.

No labelled glioma data may be downloaded for this project, so the first glioma model learns from
cases made here. Each case is built in four steps:

1. **Anatomy.** Grey matter, white matter and CSF fractions of a real healthy brain: the MNI152 2009c
   symmetric template (tissue maps shipped with nilearn) or Colin27 (``ch2bet``, tissues from a
   three-class Gaussian mixture of its T1 intensities). A random rotation (up to 12 degrees about each
   axis) and scaling (0.9-1.1) are applied to the fractions.
2. **Tumour.** One (sometimes two) irregular lesions, each a noise-perturbed ellipsoid placed in white
   matter: a core that is either enhancing (a rim of enhancement, often around a necrotic centre) or
   non-enhancing (solid, low-grade-like), wrapped in oedema that spreads preferentially along white
   matter and stays out of CSF. Sizes vary from a few to over a hundred millilitres.
3. **Contrasts.** Each tissue class has a base intensity per sequence (table ``_BASE_INTENSITY``,
   jittered per case) chosen to reproduce the relative appearance radiologists rely on: T1 WM>GM>CSF;
   T1CE like T1 plus dural/vessel enhancement and a bright enhancing rim; T2 CSF>GM>WM with bright
   oedema and necrosis; FLAIR GM>WM, dark CSF, bright oedema. Partial volumes mix linearly. Then a
   multiplicative texture, a smooth bias field, blur, noise and a random gamma per channel.
4. **Normalisation.** Per channel z-score over the brain mask with
   ``neuroflow.preprocess.normalise.zscore_in_mask`` - the very function the pipeline uses - at the
   templates' 1 mm isotropic spacing; background 0.

Labels are BraTS labels (``neuroflow.core.labels.BratsLabel``). Run as a script to write a few cases
as NIfTI and print intensity statistics per tissue class:

    python -m models.glioma_unet.synthesize --cases 3 --out synthetic-examples
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from neuroflow.core.labels import BratsLabel
from neuroflow.core.roles import GLIOMA_INPUT_ROLES
from neuroflow.preprocess.normalise import zscore_in_mask

FloatArray = npt.NDArray[np.float32]
COLIN27_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


class Tissue(IntEnum):
    """Tissue classes whose fractions make up a synthetic voxel."""

    CSF = 0
    GM = 1
    WM = 2
    OEDEMA = 3
    NECROSIS = 4
    ENHANCING = 5
    NON_ENHANCING_CORE = 6


# Base intensity of each tissue in (T1, T1CE, T2, FLAIR), relative units (WM on T1 ~ 1). The order of
# columns is GLIOMA_INPUT_ROLES. Values follow typical 1.5/3 T clinical protocols after skull stripping.
_BASE_INTENSITY: dict[Tissue, tuple[float, float, float, float]] = {
    Tissue.CSF: (0.25, 0.26, 1.00, 0.10),
    Tissue.GM: (0.62, 0.63, 0.52, 0.56),
    Tissue.WM: (0.95, 0.96, 0.36, 0.44),
    Tissue.OEDEMA: (0.55, 0.56, 0.80, 0.86),
    Tissue.NECROSIS: (0.30, 0.32, 0.92, 0.55),
    Tissue.ENHANCING: (0.60, 1.65, 0.62, 0.72),
    Tissue.NON_ENHANCING_CORE: (0.45, 0.47, 0.82, 0.78),
}
# Which BraTS label each tumour tissue carries.
_TISSUE_LABEL: dict[Tissue, BratsLabel] = {
    Tissue.OEDEMA: BratsLabel.OEDEMA,
    Tissue.NECROSIS: BratsLabel.NECROTIC_CORE,
    Tissue.NON_ENHANCING_CORE: BratsLabel.NECROTIC_CORE,
    Tissue.ENHANCING: BratsLabel.ENHANCING,
}


@dataclass(frozen=True)
class BrainTemplate:
    """Tissue fractions (CSF, GM, WM) of a healthy brain at 1 mm, shape (3, X, Y, Z), zero outside."""

    name: str
    fractions: FloatArray


@dataclass(frozen=True)
class SyntheticCase:
    """One training case: ``image`` (4, X, Y, Z) float32 z-scored in ``brain``; ``labels`` BraTS
    labels uint8; ``tissue`` the dominant Tissue per voxel (for statistics); ``brain`` the mask."""

    image: FloatArray
    labels: npt.NDArray[np.uint8]
    tissue: npt.NDArray[np.uint8]
    brain: npt.NDArray[np.bool_]
    template: str


def _nilearn_data_dir() -> Path:
    # Located without importing nilearn: only its shipped template files are needed, not its
    # dependencies (pandas, scikit-learn, ...).
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise RuntimeError("nilearn is not installed (pip install -e '.[train]')")
    return Path(spec.origin).parent / "datasets" / "data"


def load_mni152() -> BrainTemplate:
    """MNI152 2009c symmetric: GM and WM probability maps from nilearn; CSF is the rest of the brain
    mask (template T1 > 0, nilearn ships it skull-stripped)."""
    data = _nilearn_data_dir()
    t1 = np.asarray(nib.load(data / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").dataobj)
    gm = np.asarray(nib.load(data / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").dataobj) / 255.0
    wm = np.asarray(nib.load(data / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj) / 255.0
    brain = (t1 > 0).astype(np.float64)
    gm, wm = gm * brain, wm * brain
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    return BrainTemplate("mni152_2009c", _crop_to_brain(np.stack([csf, gm, wm]).astype(np.float32), 16))


def load_colin27(path: Path = COLIN27_BRAIN) -> BrainTemplate:
    """Colin27 skull-stripped T1: CSF/GM/WM posteriors from a three-class Gaussian mixture fitted to
    its intensity histogram (the image is uint8, so posteriors are a lookup table per grey value)."""
    t1 = np.asarray(nib.load(path).dataobj).astype(np.int64)
    brain = t1 > 0
    hist = np.bincount(t1[brain], minlength=int(t1.max()) + 1).astype(np.float64)
    values = np.arange(hist.size, dtype=np.float64)
    means = np.percentile(t1[brain], [10, 50, 85]).astype(np.float64)
    sds = np.full(3, 10.0)
    weights = np.full(3, 1 / 3)
    for _ in range(50):
        like = weights * np.exp(-0.5 * ((values[:, None] - means) / sds) ** 2) / sds
        post = like / np.maximum(like.sum(axis=1, keepdims=True), 1e-300)
        w = post * hist[:, None]
        weights = w.sum(axis=0) / w.sum()
        means = (w * values[:, None]).sum(axis=0) / w.sum(axis=0)
        sds = np.sqrt((w * (values[:, None] - means) ** 2).sum(axis=0) / w.sum(axis=0)) + 1e-3
    order = np.argsort(means)  # dark to bright on T1: CSF, GM, WM
    post = post[:, order]
    fractions = np.moveaxis(post[t1], -1, 0) * brain
    return BrainTemplate("colin27", _crop_to_brain(fractions.astype(np.float32), 16))


TEMPLATE_LOADERS = (load_mni152, load_colin27)


def load_templates() -> list[BrainTemplate]:
    return [load() for load in TEMPLATE_LOADERS]


def _smooth_noise(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> FloatArray:
    """A smooth random field of unit standard deviation with structures about ``scale`` voxels wide:
    white noise on a grid ``scale / 2`` times coarser, blurred there and upsampled linearly (far
    cheaper than blurring full-size noise with a wide kernel)."""
    factor = max(1, int(scale // 2))
    coarse = tuple(-(-s // factor) + 1 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), scale / (2 * factor))
    if factor > 1:
        field = ndimage.zoom(field, [s / (c - 1) for s, c in zip(shape, coarse, strict=True)], order=1,
                             prefilter=False)
    out = field[tuple(slice(0, s) for s in shape)]
    out = out - out.mean()
    return (out / max(float(out.std()), 1e-6)).astype(np.float32)


def _random_affine(fractions: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Rotate (up to 12 degrees per axis) and scale (0.9-1.1, +-4 % per axis) about the centre."""
    angles = np.deg2rad(rng.uniform(-12, 12, 3))
    rot = np.eye(3)
    for axis, angle in enumerate(angles):
        a, b = [i for i in range(3) if i != axis]
        r = np.eye(3)
        r[a, a] = r[b, b] = math.cos(angle)
        r[a, b], r[b, a] = -math.sin(angle), math.sin(angle)
        rot = rot @ r
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, 3)
    matrix = rot @ np.diag(1.0 / scale)  # output -> input coordinates
    centre = (np.array(fractions.shape[1:]) - 1) / 2
    offset = centre - matrix @ centre
    return np.stack([
        ndimage.affine_transform(f, matrix, offset, order=1, mode="constant", cval=0.0) for f in fractions
    ]).astype(np.float32)


def _crop_to_brain(fractions: FloatArray, margin: int = 6) -> FloatArray:
    brain = fractions.sum(axis=0) > 0.5
    idx = np.nonzero(brain)
    sl = tuple(slice(max(0, int(i.min()) - margin), int(i.max()) + margin + 1) for i in idx)
    return fractions[(slice(None), *sl)]


def _insert_lesion(fractions: FloatArray, tumour: npt.NDArray[np.uint8], rng: np.random.Generator) -> None:
    """Draw one lesion into ``tumour`` in place (Tissue codes; 0 = no tumour, the code of CSF is never
    used there). An existing lesion is kept where the new one only adds oedema."""
    wm = fractions[2]
    brain = fractions.sum(axis=0) > 0.5
    shape = np.array(wm.shape)
    core_radius = rng.uniform(4.0, 18.0)
    if rng.random() < 0.15:  # little or no oedema
        oedema_radius = core_radius + rng.uniform(1.0, 3.0)
    else:
        oedema_radius = core_radius * rng.uniform(1.2, 2.4) + rng.uniform(0.0, 10.0)
    reach = math.ceil(oedema_radius * 1.6) + 2
    # Centre in white matter (where gliomas mostly arise); the lesion box is clipped to the array.
    candidates = np.argwhere((wm > 0.6) & brain)
    centre = candidates[rng.integers(len(candidates))]
    lo = np.maximum(centre - reach, 0)
    hi = np.minimum(centre + reach + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre, strict=True)],
                                indexing="ij")).astype(np.float32)
    axes = rng.uniform(0.7, 1.3, 3).astype(np.float32)
    radius = np.sqrt(((grid / axes[:, None, None, None]) ** 2).sum(axis=0))
    core_field = radius + core_radius * rng.uniform(0.15, 0.4) * _smooth_noise(box_shape, rng.uniform(4, 8), rng)
    oedema_field = radius + oedema_radius * rng.uniform(0.2, 0.45) * _smooth_noise(
        box_shape, rng.uniform(5, 10), rng)
    if rng.random() < 0.7:
        _push_tissue(fractions, box, grid, core_radius, reach, rng)
        brain = fractions.sum(axis=0) > 0.5
    b_csf, b_wm, b_brain = fractions[0][box], fractions[2][box], brain[box]
    tissue_ok = b_brain & (b_csf < 0.6)
    # Infiltrative oedema: it reaches further where white matter is (fingers along the tracts) and
    # stays close to the core in cortex; how strongly it prefers white matter varies per lesion.
    wm_smooth = ndimage.gaussian_filter(b_wm, 1.0)
    preference = rng.uniform(0.3, 0.9)
    reach_here = oedema_radius * (1.0 - preference + preference * 1.5 * wm_smooth)
    oedema = tissue_ok & (oedema_field < np.maximum(reach_here, core_radius * 1.15))
    core = tissue_ok & (core_field < core_radius)
    region = tumour[box]
    region[oedema & (region == 0)] = Tissue.OEDEMA
    if rng.random() < 0.7:  # enhancing tumour: rim, often necrotic centre, patchy enhancement
        necrosis_radius = core_radius * rng.uniform(0.3, 0.75) if rng.random() < 0.7 else 0.0
        patchy = _smooth_noise(box_shape, 4.0, rng) > rng.uniform(-1.5, 0.3)
        rim = core & (core_field >= necrosis_radius)
        region[core] = Tissue.NON_ENHANCING_CORE
        region[rim & patchy] = Tissue.ENHANCING
        region[core & (core_field < necrosis_radius)] = Tissue.NECROSIS
    else:  # non-enhancing, low-grade-like core
        region[core] = Tissue.NON_ENHANCING_CORE


def _push_tissue(fractions: FloatArray, box: tuple[slice, ...], grid: FloatArray, core_radius: float,
                 reach: float, rng: np.random.Generator) -> None:
    """Mass effect: move the healthy tissue in ``box`` radially away from the lesion centre (``grid``
    holds each voxel's offset from it), by up to ``core_radius`` * 0.15-0.6 near the core, fading to
    nothing at the box edge so the warp has no seam. Ventricles and sulci near the tumour narrow."""
    radius = np.sqrt((grid**2).sum(axis=0))
    strength = core_radius * rng.uniform(0.15, 0.6)
    taper = np.clip(1.0 - radius / reach, 0.0, 1.0) ** 2
    shift = strength * np.exp(-0.5 * (radius / (1.2 * core_radius)) ** 2) * taper / np.maximum(radius, 1.0)
    lo = np.array([s.start for s in box], dtype=np.float32)
    centre = lo - grid[:, 0, 0, 0]
    # Backward mapping: each voxel takes the tissue found closer to the centre (expansion).
    coords = grid * (1.0 - shift)[None] + centre[:, None, None, None]
    for f in range(fractions.shape[0]):
        fractions[f][box] = ndimage.map_coordinates(fractions[f], coords, order=1, mode="nearest")


def _random_contrast(rng: np.random.Generator) -> FloatArray:
    """Base intensity per (tissue, channel) for one case: the table with a wide per-case jitter, and
    in 30 % of cases per-sequence healthy-tissue contrasts drawn at random (so the network cannot learn
    one protocol's grey levels), the tumour tissues then keeping their table offset from white matter
    scaled by 0.5-1.5 (the abnormality radiologists read stays, its strength varies)."""
    table = np.array([_BASE_INTENSITY[t] for t in Tissue], dtype=np.float32)
    base = table * np.exp(rng.normal(0.0, 0.15, table.shape)).astype(np.float32)
    for channel in range(table.shape[1]):
        if rng.random() < 0.3:
            base[: Tissue.WM + 1, channel] = rng.uniform(0.08, 1.0, 3)
            wm = base[Tissue.WM, channel]
            offset = table[Tissue.OEDEMA:, channel] - table[Tissue.WM, channel]
            base[Tissue.OEDEMA:, channel] = wm + offset * rng.uniform(0.5, 1.5, len(offset))
    return np.clip(base, 0.02, None)


def _thick_slices(signal: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Simulate an anisotropic acquisition resampled to 1 mm: along one random axis, average over a
    slice profile 1.5-5 mm thick, keep every n-th plane and interpolate back linearly."""
    axis = int(rng.integers(3))
    factor = rng.uniform(1.5, 5.0)
    sigma = [0.0, 0.0, 0.0]
    sigma[axis] = factor / 2.355
    blurred = ndimage.gaussian_filter(signal, sigma)
    zoom = [1.0, 1.0, 1.0]
    zoom[axis] = 1.0 / factor
    low = ndimage.zoom(blurred, zoom, order=1)
    back = ndimage.zoom(low, [s / n for s, n in zip(signal.shape, low.shape, strict=True)], order=1)
    out = np.zeros_like(signal)
    region = tuple(slice(0, min(a, b)) for a, b in zip(signal.shape, back.shape, strict=True))
    out[region] = back[region]
    return out


def synthesize_case(template: BrainTemplate, rng: np.random.Generator) -> SyntheticCase:
    """Make one case from ``template`` (see the module docstring for the recipe)."""
    fractions = _crop_to_brain(_random_affine(template.fractions, rng))  # template is pre-cropped
    fractions = np.ascontiguousarray(np.clip(fractions, 0.0, 1.0))
    shape = fractions.shape[1:]
    tumour = np.zeros(shape, dtype=np.uint8)  # Tissue code of tumour voxels, 0 elsewhere (CSF unused)
    for _ in range(2 if rng.random() < 0.15 else 1):
        _insert_lesion(fractions, tumour, rng)  # may push tissue (mass effect), so the brain after
    brain = fractions.sum(axis=0) > 0.5
    tumour[~brain] = 0

    # Soft tumour fractions (partial volume at the border) displace the normal tissue.
    all_fractions = np.zeros((len(Tissue), *shape), dtype=np.float32)
    tumour_total = np.zeros(shape, dtype=np.float32)
    for tissue in (Tissue.OEDEMA, Tissue.NECROSIS, Tissue.ENHANCING, Tissue.NON_ENHANCING_CORE):
        soft = ndimage.gaussian_filter((tumour == tissue).astype(np.float32), 0.7)
        all_fractions[tissue] = soft
        tumour_total += soft
    excess = np.maximum(tumour_total, 1.0)  # overlapping soft borders: renormalise to a total of 1
    all_fractions[Tissue.OEDEMA:] /= excess
    scale = np.clip(1.0 - tumour_total / excess, 0.0, 1.0)
    all_fractions[:3] = fractions * scale
    all_fractions *= brain

    image = np.zeros((len(GLIOMA_INPUT_ROLES), *shape), dtype=np.float32)
    texture = _smooth_noise(shape, 2.5, rng)
    heterogeneity = _smooth_noise(shape, 3.0, rng)
    vessels = _vessel_map(all_fractions, rng)
    contrast = _random_contrast(rng)
    for channel in range(len(GLIOMA_INPUT_ROLES)):
        signal = np.zeros(shape, dtype=np.float32)
        for tissue in Tissue:
            base = float(contrast[tissue, channel])
            if tissue >= Tissue.OEDEMA:
                signal += all_fractions[tissue] * base * (1.0 + rng.uniform(0.04, 0.15) * heterogeneity)
            else:
                signal += all_fractions[tissue] * base
        if GLIOMA_INPUT_ROLES[channel].value == "T1CE":
            signal += vessels * rng.uniform(0.3, 0.9)
        signal *= 1.0 + rng.uniform(0.01, 0.06) * texture
        signal *= np.exp(rng.uniform(0.0, 0.4) * _smooth_noise(shape, rng.uniform(30.0, 60.0), rng))  # bias
        signal = ndimage.gaussian_filter(signal, rng.uniform(0.3, 1.0))
        if rng.random() < 0.5:
            signal = _thick_slices(signal, rng)
        sd = rng.uniform(0.005, 0.06)  # Rician noise, as in magnitude images
        signal = np.hypot(signal + rng.normal(0.0, sd, shape).astype(np.float32),
                          rng.normal(0.0, sd, shape).astype(np.float32))
        peak = float(np.percentile(signal[brain], 99.5))
        signal = (signal / peak) ** rng.uniform(0.6, 1.6)
        image[channel] = zscore_in_mask(signal, brain)

    labels = np.zeros(shape, dtype=np.uint8)
    for tissue, label in _TISSUE_LABEL.items():
        labels[tumour == tissue] = label
    dominant = np.argmax(all_fractions, axis=0).astype(np.uint8)
    return SyntheticCase(image=image, labels=labels, tissue=dominant, brain=brain, template=template.name)


def _vessel_map(fractions: FloatArray, rng: np.random.Generator) -> FloatArray:
    """Thin enhancing structures of a normal T1CE (dura, sinuses, choroid plexus, cortical veins):
    ridges of a smooth noise field, kept near CSF, so enhancement alone does not mean tumour."""
    near_csf = ndimage.gaussian_filter(fractions[Tissue.CSF], 1.5)
    ridges = np.abs(_smooth_noise(near_csf.shape, 6.0, rng)) < 0.08
    return (ridges * (near_csf > 0.35)).astype(np.float32)


def tissue_statistics(case: SyntheticCase) -> dict[str, list[float]]:
    """Mean z-score per channel for each dominant tissue present (for checking plausibility)."""
    stats: dict[str, list[float]] = {}
    for tissue in Tissue:
        sel = (case.tissue == tissue) & case.brain
        if sel.sum() > 50:
            stats[tissue.name] = [round(float(case.image[c][sel].mean()), 2) for c in range(case.image.shape[0])]
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write NIfTI files of each case here")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    templates = load_templates()
    print("channels:", [r.value for r in GLIOMA_INPUT_ROLES])
    for i in range(args.cases):
        case = synthesize_case(templates[i % len(templates)], rng)
        volumes = {BratsLabel(v).name: int((case.labels == v).sum()) for v in np.unique(case.labels) if v}
        print(f"case {i} ({case.template}) shape {case.labels.shape} label voxels {volumes}")
        for name, means in tissue_statistics(case).items():
            print(f"   {name:20s} {means}")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            for c, role in enumerate(GLIOMA_INPUT_ROLES):
                nib.save(nib.Nifti1Image(case.image[c], np.eye(4)), args.out / f"case{i}_{role.value}.nii.gz")
            nib.save(nib.Nifti1Image(case.labels, np.eye(4)), args.out / f"case{i}_seg.nii.gz")


if __name__ == "__main__":
    main()
