"""Reading neuroflow's own glioma SEG back: a later post-operative study takes the tumour it holds as where the
resection cavity must lie (preprocess/prior_bed.py). In the core because both runtimes read it where they
preprocess, and results (which writes it, results/dicom_seg.py) is another service."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.uid import SegmentationStorage

from neuroflow.core.config import ResultObjectSettings
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import RESECTION_CAVITY_CODE
from neuroflow.core.slice_order import sources_in_slice_order
from neuroflow.core.volume import Geometry


def latest_glioma_seg(headers: Sequence[pydicom.Dataset], objects: ResultObjectSettings) -> pydicom.Dataset | None:
    """Of a study's objects (headers, as a source indexes them), the glioma SEG neuroflow made there last (the
    site's glioma SEG series number; the newest content date and time when re-runs left several), or None."""
    ours = [h for h in headers
            if str(h.get("SOPClassUID", "")) == str(SegmentationStorage)
            and str(h.get("Manufacturer", "")) == NEUROFLOW_MANUFACTURER
            and h.get("SeriesNumber") is not None and int(h.SeriesNumber) == objects.seg_series_number]
    return max(ours, key=lambda h: (str(h.get("ContentDate", "")), str(h.get("ContentTime", ""))), default=None)


def seg_tumour_mask(seg: pydicom.Dataset, source_instances: Sequence[pydicom.Dataset], geometry: Geometry, *,
                    stage: str) -> npt.NDArray[np.bool_]:
    """The tumour of a glioma SEG (every segment but the resection cavity's) as a mask (z, y, x) on ``geometry``,
    the grid of the series the SEG is drawn on (``source_instances``, headers enough). Refuses (StudyError, naming
    ``stage``) source instances off that grid; a source slice the SEG has no frame for is empty (the writer omits
    empty frames)."""
    segmentation = hd.seg.Segmentation.from_dataset(seg, copy=False)
    tumour = [int(item.SegmentNumber) for item in seg.SegmentSequence
              if str(item.SegmentedPropertyTypeCodeSequence[0].CodeValue) != RESECTION_CAVITY_CODE[0]]
    ordered = sources_in_slice_order(geometry, source_instances, stage=stage)
    if not tumour:
        return np.zeros((len(ordered), *geometry.size[1::-1]), dtype=bool)
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[str(ds.SOPInstanceUID) for ds in ordered], segment_numbers=tumour,
        combine_segments=True, skip_overlap_checks=True, assert_missing_frames_are_empty=True)
    mask: npt.NDArray[np.bool_] = np.asarray(pixels) > 0
    return mask
