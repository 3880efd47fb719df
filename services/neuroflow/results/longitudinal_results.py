"""The result objects of the change pipelines, drawn on the series as acquired: a DICOM SEG of the new MS
lesions on the follow-up FLAIR, a DICOM SEG of the haematoma on each CT, and a colour overlay series on
the follow-up FLAIR (new lesions vermillion, rejected candidates blue) for a reviewer's viewer.

Every object's UIDs follow from (kind, source series, algorithm, input hash), so a rerun on the same pair
replaces the earlier objects in PACS instead of adding second ones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from neuroflow.core.config import CHANGE_ALGORITHM_VERSION, ResultObjectSettings
from neuroflow.core.labels import (
    CHANGE_OVERLAY_RGB,
    HAEMATOMA_SEGMENT,
    MS_NEW_LESION_SEGMENT,
    OTHER_BLOOD_SEGMENT,
    ChangeLabel,
)
from neuroflow.core.model_card import ModelRef
from neuroflow.core.volume import Volume
from neuroflow.results.dicom_seg import build_seg
from neuroflow.results.overlay import LegendEntry, overlay_series

MS_SEG_FILE = "ms_new_lesions_seg.dcm"
MS_OVERLAY_FOLDER = "ms_overlay"
MS_SR_FILE = "ms_new_lesions_sr.dcm"
HAEMATOMA_BASELINE_SEG_FILE = "haematoma_baseline_seg.dcm"
HAEMATOMA_FOLLOWUP_SEG_FILE = "haematoma_followup_seg.dcm"
METASTASES_RESPONSE_SR_FILE = "metastases_response_sr.dcm"

# The methods that drew the change objects (the network hooks, when used, name their model instead).
MS_SUBTRACTION = ModelRef(name="ms_subtraction", version=CHANGE_ALGORITHM_VERSION)
HAEMATOMA_HU = ModelRef(name="haematoma_hu_threshold", version=CHANGE_ALGORITHM_VERSION)

MS_OVERLAY_DESCRIPTION = "AI new MS lesions overlay, for review (not for diagnosis)"
_CHANGE_NAMES = {ChangeLabel.NEW_LESION: "New/enlarging lesion", ChangeLabel.REJECTED_CANDIDATE: "Rejected candidate"}
CHANGE_LEGEND = tuple(LegendEntry(int(label), _CHANGE_NAMES[label], rgb) for label, rgb in CHANGE_OVERLAY_RGB.items())


def ms_lesion_seg(
    labels: Volume, followup_flair: Sequence[pydicom.Dataset], *, input_hash: str,
    algorithm: ModelRef = MS_SUBTRACTION, objects: ResultObjectSettings | None = None,
) -> pydicom.Dataset | None:
    """The SEG of the new lesions (label :attr:`ChangeLabel.NEW_LESION` of ``labels``, on the follow-up
    FLAIR's own grid) referencing the follow-up FLAIR instances; ``None`` when there is no new lesion.
    ``algorithm``: the subtraction method, or the lesion network when one joined it."""
    objects = objects or ResultObjectSettings()
    new = (np.asarray(labels.array) == ChangeLabel.NEW_LESION).astype(np.uint8) * MS_NEW_LESION_SEGMENT.number
    return build_seg(
        labels.with_array(new), followup_flair, segments=(MS_NEW_LESION_SEGMENT,), algorithm=algorithm,
        algorithm_family=_family(algorithm, MS_SUBTRACTION), kind="neuroflow.ms-new-lesions-seg",
        series_description="AI new/enlarging MS lesions (research, not for diagnosis)", content_label="MS_NEW_AI",
        manufacturer_model_name="neuroflow MS new lesions", series_number=objects.ms_seg_series_number,
        input_hash=input_hash, uid_root=objects.uid_root,
    )


def haematoma_seg(
    mask: Volume, ct_instances: Sequence[pydicom.Dataset], *, input_hash: str, timepoint: str,
    algorithm: ModelRef = HAEMATOMA_HU, objects: ResultObjectSettings | None = None,
) -> pydicom.Dataset | None:
    """The SEG of a haematoma label map (``HaematomaChange.baseline_mask``: the haematoma, and any other
    blood-density regions as a second segment, on the CT's own grid) referencing that CT's instances;
    ``timepoint`` ("baseline"/"follow-up") enters the description and the UIDs. ``None`` when there is no
    haematoma."""
    objects = objects or ResultObjectSettings()
    numbers = np.asarray(mask.array).astype(np.uint8)
    if not (numbers == HAEMATOMA_SEGMENT.number).any():
        return None
    others = (OTHER_BLOOD_SEGMENT,) if (numbers == OTHER_BLOOD_SEGMENT.number).any() else ()
    return build_seg(
        mask.with_array(numbers), ct_instances, segments=(HAEMATOMA_SEGMENT, *others), algorithm=algorithm,
        algorithm_family=_family(algorithm, HAEMATOMA_HU), kind=f"neuroflow.haematoma-seg.{timepoint}",
        series_description=f"AI haematoma {timepoint} (research, not for diagnosis)", content_label="HAEMATOMA_AI",
        manufacturer_model_name="neuroflow haematoma expansion", series_number=objects.haematoma_seg_series_number,
        input_hash=input_hash, uid_root=objects.uid_root,
    )


def change_overlay(
    image: Volume,
    labels: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    input_hash: str,
    objects: ResultObjectSettings | None = None,
    series_description: str = MS_OVERLAY_DESCRIPTION,
) -> list[Dataset]:
    """The colour overlay series of the change labels on the follow-up FLAIR (:func:`overlay.overlay_series`):
    new lesions vermillion, rejected candidates blue (:data:`CHANGE_OVERLAY_RGB`), with the banner and
    legend burned in. ``image`` is the source series as converted; ``labels`` must be on its grid."""
    objects = objects or ResultObjectSettings()
    return overlay_series(image, labels, source_instances, legend=CHANGE_LEGEND, kind="neuroflow.change-overlay",
                          input_hash=input_hash, series_number=objects.ms_overlay_series_number,
                          series_description=series_description, uid_root=objects.uid_root)


def _family(algorithm: ModelRef, method: ModelRef) -> Code:
    """CID 7162: the intensity-based methods are histogram analysis; a network that joined them is AI."""
    family: Code = (codes.cid7162.HistogramAnalysis if algorithm == method
                    else codes.cid7162.ArtificialIntelligence)
    return family
