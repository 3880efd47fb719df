"""A DICOM SEG as a label volume on the grid of the series it was drawn on, with each segment's colour: what
the viewer lays over the image.

The SEG's frames are placed by their own plane positions (highdicom), then resampled (nearest neighbour)
onto the displayed series' grid in patient space: a SEG that omits empty frames, or one drawn on another
grid of the same frame of reference, still lands where it was drawn."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from neuroflow.core.volume import Geometry, Volume, resample


@dataclass(frozen=True)
class SegmentColour:
    number: int  # the segment number, which is the value of its voxels in the label volume
    label: str
    rgb: tuple[int, int, int]


def segment_colours(seg: Dataset) -> list[SegmentColour]:
    """Each segment's number, label and recommended display colour (grey where the SEG states none)."""
    colours: list[SegmentColour] = []
    for item in seg.get("SegmentSequence", []):
        lab = item.get("RecommendedDisplayCIELabValue")
        rgb = hd.color.CIELabColor.from_dicom_value(list(lab)).to_rgb() if lab else (200, 200, 200)
        colours.append(SegmentColour(int(item.SegmentNumber), str(item.get("SegmentLabel", "")),
                                     (int(rgb[0]), int(rgb[1]), int(rgb[2]))))
    return colours


def seg_label_volume(seg: Dataset, grid: Geometry) -> Volume:
    """The SEG's segments as one uint8 label volume on ``grid`` (0: no segment, n: segment number n).
    Raises ValueError (highdicom's words) on a SEG whose frames do not form a volume."""
    decoded = hd.seg.Segmentation.from_dataset(seg, copy=False)
    volume = decoded.get_volume(combine_segments=True, dtype=np.uint8)
    image = volume.to_simpleitk()
    if image.GetNumberOfComponentsPerPixel() != 1:  # a channel axis left over
        raise ValueError("the SEG did not decode to one label per voxel")
    labels = Volume.from_sitk(sitk.Cast(image, sitk.sitkUInt8))
    return resample(labels, grid, interpolator=sitk.sitkNearestNeighbor)
