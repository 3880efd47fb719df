"""Which instance of a series lies at each slice of a volume grid: what ties a result drawn on a series (a SEG's
frames, an overlay image, an RTSTRUCT's contours) to its source images, and a SEG read back to the grid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom

from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import StudyError
from neuroflow.core.identity import uid_key
from neuroflow.core.volume import Geometry

# A source slice is "the" slice of the volume when it lies within this fraction of a voxel of it.
# Looser than float noise (DS strings carry ~1e-6 mm), far tighter than a one-slice mix-up.
_POSITION_TOLERANCE_VOXELS = 0.1
_DIRECTION_TOLERANCE = 1e-4


def sources_in_slice_order(
    geometry: Geometry, instances: Sequence[pydicom.Dataset], *, stage: str = "results"
) -> list[pydicom.Dataset]:
    """The instance at each slice k of ``geometry``, k = 0 .. n-1; refuses (StudyError) anything off
    that grid (the error names ``stage``). What places a result drawn on a series (a SEG's frames, an overlay
    image, an RTSTRUCT's contours) on its source slices, and reads a SEG back."""
    first = instances[0]
    series_uid = str(first.get("SeriesInstanceUID", ""))

    def refuse(reason: str) -> StudyError:
        return StudyError(study_key(str(first.get("StudyInstanceUID", ""))), reason,
                          stage=stage, series_uid=series_uid or None)

    n_columns, n_rows, n_slices = geometry.size
    direction = geometry.direction_matrix()
    to_index = np.linalg.inv(geometry.index_to_patient())
    by_slice: dict[int, pydicom.Dataset] = {}
    for ds in instances:
        # Named by number and key in errors, never by UID (error texts reach logs and dead letters).
        sop_uid = str(ds.get("SOPInstanceUID", "?"))
        instance = f"{ds.get('InstanceNumber', '?')} (key {uid_key(sop_uid)})"
        if str(ds.get("SeriesInstanceUID", "")) != series_uid:
            raise refuse(f"instance {instance} belongs to another series")
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise refuse(f"instance {instance} has no ImagePositionPatient/ImageOrientationPatient")
        if (int(ds.Rows), int(ds.Columns)) != (n_rows, n_columns):
            raise refuse(f"instance {instance} is {ds.Rows}x{ds.Columns} pixels, the segmentation grid "
                         f"{n_rows}x{n_columns}")
        orientation = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(orientation, np.concatenate([direction[:, 0], direction[:, 1]]),
                           atol=_DIRECTION_TOLERANCE):
            raise refuse(f"instance {instance} is oriented {list(orientation)}, not as the segmentation grid")
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        if not np.allclose((column_spacing, row_spacing), geometry.spacing[:2],
                           atol=_POSITION_TOLERANCE_VOXELS * min(geometry.spacing[:2])):
            raise refuse(f"instance {instance} has pixel spacing {row_spacing}/{column_spacing} mm, the "
                         f"segmentation grid {geometry.spacing[1]}/{geometry.spacing[0]} mm")
        position = np.append([float(v) for v in ds.ImagePositionPatient], 1.0)
        i, j, k = (to_index @ position)[:3]
        slice_index = round(k)
        if (max(abs(i), abs(j), abs(k - slice_index)) > _POSITION_TOLERANCE_VOXELS
                or not 0 <= slice_index < n_slices):
            raise refuse(f"instance {instance} at {list(position[:3])} lies on no slice of the "
                         "segmentation grid")
        if slice_index in by_slice:
            raise refuse(f"instances {by_slice[slice_index].get('InstanceNumber', '?')} and {instance} lie at the same "
                         f"position (slice {slice_index}); cannot tell which one the segmentation belongs to")
        by_slice[slice_index] = ds
    missing = [k for k in range(n_slices) if k not in by_slice]
    if missing:
        raise refuse(f"no source instance for slices {missing} of {n_slices}; the series is incomplete")
    return [by_slice[k] for k in range(n_slices)]
