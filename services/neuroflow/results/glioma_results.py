"""The glioma result objects, drawn on the reference series as it was acquired."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
import SimpleITK as sitk

from neuroflow.core.model_card import ModelRef
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.results.dicom_seg import build_glioma_seg


def glioma_seg(
    labels_on_grid: Volume,
    reference_geometry: Geometry,
    reference_instances: Sequence[pydicom.Dataset],
    *,
    model: ModelRef,
    input_hash: str,
) -> pydicom.Dataset | None:
    """The DICOM SEG of a label map computed on the common 1 mm grid, resampled (nearest neighbour)
    onto the reference series' own voxel grid so a viewer overlays it slice by slice on the images
    the radiologist reads. ``None`` when no tumour was found."""
    on_reference = resample(labels_on_grid, reference_geometry, interpolator=sitk.sitkNearestNeighbor)
    labels = on_reference.with_array(np.asarray(on_reference.array, dtype=np.uint8))
    return build_glioma_seg(labels, reference_instances, model=model, input_hash=input_hash)
