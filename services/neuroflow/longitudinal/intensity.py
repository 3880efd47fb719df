"""Intensity steps of the change pipelines: N4 bias-field correction and matching one scan's intensities
to another's, both inside a brain mask, so that a subtraction shows change and not scanner drift."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroflow.core.volume import Volume

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

# The quantiles (percent) matched between scans: dense in the upper half, where lesions are judged.
MATCH_PERCENTILES = (1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 98.0, 99.0)


def n4_bias_correct(volume: Volume, mask: BoolArray, *, working_spacing_mm: float = 6.0,
                    iterations: tuple[int, ...] = (40, 30), spline_distance_mm: float = 100.0) -> Volume:
    """``volume`` divided by its N4 bias field (Tustison et al. 2010), estimated inside ``mask``.

    The field is smooth (B-spline control points ``spline_distance_mm`` apart), so it is fitted on the
    image shrunk to about ``working_spacing_mm`` voxels, the usual practice: at 6 mm and two fitting levels
    N4 takes 1.4 s on a 240x240x155 FLAIR against 8 s at 4 mm and three levels (2 busy cores)."""
    image = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    image = sitk.Maximum(image, 0.0)  # N4 works on the log of the image: no negatives
    mask_image = sitk.GetImageFromArray(mask.astype(np.uint8))
    mask_image.CopyInformation(image)
    factors = [max(1, min(round(working_spacing_mm / s), n // 8)) for n, s in
               zip(image.GetSize(), image.GetSpacing(), strict=True)]
    small = sitk.Shrink(image, factors)
    small_mask = sitk.Shrink(mask_image, factors)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing(), strict=True)]
    corrector.SetNumberOfControlPoints([max(4, round(e / spline_distance_mm) + 3) for e in extent])
    corrector.Execute(small, small_mask)
    # The field is a smooth B-spline: evaluated on the shrunk grid and interpolated linearly onto the full
    # grid, it differs by far less than 0.1 % from a full-resolution evaluation, at a tenth of the time.
    log_small = corrector.GetLogBiasFieldAsImage(small)
    log_field = sitk.Resample(log_small, image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                              useNearestNeighborExtrapolator=True)
    corrected = sitk.GetArrayFromImage(image) / np.exp(sitk.GetArrayFromImage(log_field))
    return volume.with_array(corrected.astype(np.float32))


def match_intensities(source: FloatArray, reference: FloatArray, mask: BoolArray) -> FloatArray:
    """``source`` mapped onto ``reference``'s intensity scale by piecewise-linear matching of their
    quantiles inside ``mask`` (both on one grid; Nyúl-Udupa style), extrapolated linearly beyond the
    outermost quantiles so the brightest voxels (lesions) keep their contrast instead of being clipped."""
    src = np.percentile(source[mask], MATCH_PERCENTILES)
    ref = np.percentile(reference[mask], MATCH_PERCENTILES)
    src = np.maximum.accumulate(src + np.arange(len(src)) * 1e-6)  # strictly increasing for interp
    mapped = np.interp(source, src, ref)
    top_slope = (ref[-1] - ref[-3]) / max(src[-1] - src[-3], 1e-6)
    bottom_slope = (ref[1] - ref[0]) / max(src[1] - src[0], 1e-6)
    mapped = np.where(source > src[-1], ref[-1] + (source - src[-1]) * top_slope, mapped)
    mapped = np.where(source < src[0], ref[0] + (source - src[0]) * bottom_slope, mapped)
    return mapped.astype(np.float32)
