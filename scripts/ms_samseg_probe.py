"""Probe for issue 18: would an established lesion segmenter, compared visit against visit, find the real pairs'
new and enlarging lesions where the FLAIR subtraction does not?

The segmenter is SAMSEG with its lesion model (Cerri et al., NeuroImage 2021; longitudinal: Cerri et al.,
NeuroImage 2023; MIT, PyPI ``samseg``, whose wheel carries the atlas and the lesion shape model). It needs
``numpy<2`` and TensorFlow, which the project's environment does not hold, so it runs from an environment of its
own, installed from the registries on first use like the benchmarked peers' (``devtools.peer_envs``:
``build/peers/samseg``).

Two ways, each on FLAIR only (what the MS pipeline receives), lesion mask pattern +1 (lesions brighter than
cortex), default lesion threshold 0.3:

* ``cross``: each visit segmented on its own grid; the baseline's lesion mask carried onto the follow-up's grid
  with the database's transforms; new or enlarging = follow-up lesion voxels more than one voxel from a baseline
  lesion, in components of >= 12 mm³;
* ``long``: both visits resampled onto the common grid with the database's transforms and segmented jointly
  (``run_samseg_long``, which needs co-registered inputs), the same rule on that grid;
* ``control``: the segmenter itself, on the cross-sectional database's FLAIRs (``ms-crosssectional-ljubljana``,
  3D FLAIR, multi-rater consensus masks): a consensus lesion of >= 12 mm³ is found when a SAMSEG lesion
  component overlaps it; a SAMSEG component of >= 12 mm³ touching no consensus lesion is a false positive. It
  tells whether a miss on the pairs is the segmenter's or the pair's.

Both use the database's registration, not neuroflow's, so the figure is the segmenter's best case. Each
component is scored as ``scripts/bench_ms_real.py`` scores the product (``lesion_change_scoring``). Both patients
are development data. Usage: ``python scripts/ms_samseg_probe.py [--mode cross|long|control]
[--patients patient01] [--work DIR]`` (about 6 minutes a visit on 2 cores, ``cross``; ``long`` about 40 a pair)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from scipy import ndimage

from neuroflow.devtools.lesion_change_scoring import MIN_REFERENCE_MM3, Detection
from neuroflow.devtools.ms_real_pairs import DATA, patients, score_patient, to_common
from neuroflow.devtools.peer_envs import Peer, PeerUnavailable, ensure_peer

ROOT = Path(__file__).resolve().parents[1]
SAMSEG = Peer("samseg", ("samseg==0.4a0", "numpy<2", "tensorflow-cpu"))
# FreeSurfer's colour table label for SAMSEG's lesion class.
LESION_LABEL = 99
CROSS_SECTIONAL = DATA.parent / "ms-crosssectional-ljubljana"
VISITS = ("study1", "study2")
STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connected components, as the reference's
BoolArray = npt.NDArray[np.bool_]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samseg-bin", type=Path, help="folder holding run_samseg(_long) (default: its own "
                        "environment, build/peers/samseg, installed on first use)")
    parser.add_argument("--mode", choices=("cross", "long", "control"), default="cross")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--patients", nargs="*", help="only these patient folders (e.g. patient01)")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "samseg-probe", help="SAMSEG's outputs (reused)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.samseg_bin is None:
        env = ensure_peer(ROOT / "build", SAMSEG)
        if isinstance(env, PeerUnavailable):
            sys.exit(f"ms_samseg_probe: SAMSEG could not be installed: {env.reason}")
        args.samseg_bin = env.bin("run_samseg").parent
    if args.mode == "control":
        for folder in sorted(CROSS_SECTIONAL.glob("patient*")):
            _control(folder, args.work / "control" / folder.name, args.samseg_bin, args.threads)
        return
    for folder in patients(args.data):
        if args.patients and folder.name not in args.patients:
            continue
        work = args.work / args.mode / folder.name
        if args.mode == "cross":
            detections = _cross_sectional(folder, work, args.samseg_bin, args.threads)
        else:
            detections = _longitudinal(folder, work, args.samseg_bin, args.threads)
        s = score_patient(folder, detections)
        print(f"{folder.name} ({args.mode}): {s.hits}/{s.total} found, {len(s.false_positives)} FP "
              f"({len(s.near_misses)} near), F1 {s.f1:.2f}, {len(detections)} reported", flush=True)


def _cross_sectional(folder: Path, work: Path, samseg_bin: Path, threads: int) -> list[Detection]:
    images = [sitk.ReadImage(str(folder / f"{visit}_FLAIR.nii.gz")) for visit in VISITS]
    masks = []
    for visit, image in zip(VISITS, images, strict=True):
        out = work / visit
        _run(samseg_bin / "run_samseg", ["-i", str(folder / f"{visit}_FLAIR.nii.gz")], out, threads, out / "seg.mgz")
        masks.append(_as_image(_lesions(out / "seg.mgz"), image))
    # A follow-up point -> the common space -> the baseline scan (each stored transform maps common -> scan).
    mapping = to_common(folder, "study2")
    followup_to_baseline = sitk.CompositeTransform([
        sitk.ReadTransform(str(folder / "study1_FLAIR_to_common_space.txt")), mapping])
    baseline = sitk.Resample(masks[0], images[1], followup_to_baseline, sitk.sitkNearestNeighbor, 0)
    new = _new_tissue(sitk.GetArrayFromImage(baseline).astype(bool), sitk.GetArrayFromImage(masks[1]).astype(bool))
    return [Detection(mapping.TransformPoint(point), volume) for point, volume in _components(new, images[1])]


def _longitudinal(folder: Path, work: Path, samseg_bin: Path, threads: int) -> list[Detection]:
    common = sitk.ReadImage(str(folder / "gt.nii.gz"))
    inputs: list[str] = []
    for visit in VISITS:
        image = sitk.ReadImage(str(folder / f"{visit}_FLAIR.nii.gz"), sitk.sitkFloat32)
        transform = sitk.ReadTransform(str(folder / f"{visit}_FLAIR_to_common_space.txt"))
        path = work / f"{visit}_common.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(sitk.Resample(image, common, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32), str(path))
        inputs += ["-t", str(path)]
    _run(samseg_bin / "run_samseg_long", inputs, work / "samseg", threads, work / "samseg" / "tp002" / "seg.mgz")
    baseline, followup = (_lesions(work / "samseg" / f"tp00{i}" / "seg.mgz") for i in (1, 2))
    return [Detection(point, volume) for point, volume in _components(_new_tissue(baseline, followup), common)]


def _control(folder: Path, work: Path, samseg_bin: Path, threads: int) -> None:
    _run(samseg_bin / "run_samseg", ["-i", str(folder / "FLAIR.nii.gz")], work, threads, work / "seg.mgz")
    grid = sitk.ReadImage(str(folder / "GOLD_STANDARD.nii.gz"))
    consensus = sitk.GetArrayFromImage(grid) > 0
    found = _lesions(work / "seg.mgz")
    if found.shape != consensus.shape:
        raise ValueError(f"{folder.name}: SAMSEG's grid {found.shape} is not the consensus mask's {consensus.shape}")
    voxel_mm3 = float(np.prod(grid.GetSpacing()))
    reference, count = ndimage.label(consensus, structure=STRUCTURE)
    sizes = ndimage.sum_labels(consensus, reference, range(1, count + 1)) * voxel_mm3
    large = [label for label, size in enumerate(sizes, start=1) if size >= MIN_REFERENCE_MM3]
    hits = sum(1 for label in large if found[reference == label].any())
    components, n_found = ndimage.label(found, structure=STRUCTURE)
    found_sizes = ndimage.sum_labels(found, components, range(1, n_found + 1)) * voxel_mm3
    false = sum(1 for index, size in enumerate(found_sizes, start=1)
                if size >= MIN_REFERENCE_MM3 and not consensus[components == index].any())
    print(f"{folder.name} (control): {hits}/{len(large)} consensus lesions found, {false} FP components",
          flush=True)


def _run(program: Path, inputs: list[str], out: Path, threads: int, result: Path) -> None:
    """SAMSEG with its lesion model into ``out``, unless ``result`` is there from an earlier run."""
    if result.is_file():
        return
    subprocess.run([str(program), *inputs, "-o", str(out), "--lesion", "--lesion-mask-pattern", "1",
                    "--threads", str(threads), "--pallidum-separate"], check=True, capture_output=True)


def _lesions(seg: Path) -> BoolArray:
    """SAMSEG's lesion label, in SimpleITK's (k, j, i) order (nibabel reads (i, j, k))."""
    image = nib.load(str(seg))
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise ValueError(f"{seg} is not a volume")
    return np.asarray(np.transpose(np.asarray(image.dataobj) == LESION_LABEL, (2, 1, 0)))


def _as_image(mask: BoolArray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def _new_tissue(baseline: BoolArray, followup: BoolArray) -> BoolArray:
    """Follow-up lesion voxels more than one voxel away from a baseline lesion."""
    return np.asarray(followup & ~ndimage.binary_dilation(baseline))


def _components(mask: BoolArray, grid: sitk.Image) -> list[tuple[tuple[float, float, float], float]]:
    """Each 26-connected component of >= 12 mm³: its centroid (the grid's physical space) and volume."""
    voxel_mm3 = float(np.prod(grid.GetSpacing()))
    labels, count = ndimage.label(mask, structure=STRUCTURE)
    found = []
    for index in range(1, count + 1):
        voxels = np.argwhere(labels == index)
        volume = len(voxels) * voxel_mm3
        if volume >= MIN_REFERENCE_MM3:
            centre = tuple(float(c) for c in voxels.mean(axis=0)[::-1])
            found.append((grid.TransformContinuousIndexToPhysicalPoint(centre), volume))
    return found


if __name__ == "__main__":
    main()
