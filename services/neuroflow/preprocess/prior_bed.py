"""A post-operative study's prior tumour on its own grid (issue 15, seed S001): where the resection cavity must lie
(segmentation/cavity.py, rule 4). After a gross total resection the network draws no tumour today; without the
prior's tumour the cavity step can only take the largest fluid region, which may be a cyst or an old infarct.

The prior is the study whose glioma result made this one post-operative (the embedded runtime's
``prior_tumour``; in the distributed runtime, ingest's ``prior_tumour_in_orthanc`` names it in the StudyReady):
its latest neuroflow glioma SEG is read back on the series it is drawn on (the prior's reference series, which the
source must hold: the SEG alone has no anatomy to register), that series is registered across sessions onto this
study's reference series (``preprocess.register.register_sessions``, the metric inside today's brain), and the
tumour is resampled onto the brain mask's grid. A registration whose outlines disagree (below
``OUTLINE_AGREEMENT_MIN``) is not used: a bed placed centimetres off would tie the cavity to healthy brain."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, SeriesInstances, StudyIndex
from neuroflow.core.errors import NeuroflowError
from neuroflow.core.handoff import OUTLINE_AGREEMENT_MIN
from neuroflow.core.prior_seg import latest_glioma_seg, seg_tumour_mask
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Volume, resample
from neuroflow.preprocess.register import register_sessions

Mask = npt.NDArray[np.bool_]
STAGE = "preprocess"


@dataclass(frozen=True)
class PriorBed:
    """The prior's tumour on the brain mask's grid (None: it could not be placed) and what was done, one line."""

    mask: Mask | None
    note: str


def prior_tumour_bed(source: DicomSource, prior: StudyIndex, reference: Volume, brain_mask: Volume,
                     settings: NeuroflowSettings, *, study_key: str) -> PriorBed:
    """``prior``'s tumour (its latest neuroflow glioma SEG) on ``brain_mask``'s grid, registered through
    ``reference`` (this study's reference series as acquired, whose session the brain mask is of). Never raises for
    what the prior lacks or a failed read: the note says why no bed was placed."""
    found = [(header, SeriesInstances(prior.study_instance_uid, item.series_instance_uid, [header], [path]))
             for item in prior.set_aside for header, path in zip(item.headers, item.paths, strict=False)]
    header = latest_glioma_seg([h for h, _ in found], settings.results)
    if header is None:
        return PriorBed(None, "the prior study holds no neuroflow glioma SEG")
    try:
        seg = source.read_instances(next(s for h, s in found if h is header))[0]
        drawn_on = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        if drawn_on not in prior.series:
            return PriorBed(None, "the series the prior's SEG is drawn on is not in the input")
        instances = source.read_instances(prior.series[drawn_on])
        prior_image = series_to_volume(instances, study_key=study_key)
        tumour = seg_tumour_mask(seg, instances, prior_image.geometry, stage=STAGE)
    except (NeuroflowError, AttributeError, IndexError, KeyError, ValueError) as exc:
        # A SEG or series that cannot be read back costs the bed, never the study. The note reaches logs: a
        # library's message can quote UIDs, so only neuroflow's own (written without identifiers) is kept.
        why = str(exc) if isinstance(exc, NeuroflowError) else type(exc).__name__
        return PriorBed(None, f"the prior's SEG could not be read back: {why}")
    if not tumour.any():
        return PriorBed(None, "the prior's SEG holds no tumour")
    registration = register_sessions(reference, prior_image, fixed_mask=brain_mask)
    where = (f"outline agreement {registration.outline_dice:.2f}, {registration.translation_mm:.1f} mm, "
             f"{registration.rotation_deg:.1f} deg")
    if registration.outline_dice < OUTLINE_AGREEMENT_MIN:
        return PriorBed(None, f"the prior's reference series did not register onto this study's ({where})")
    on_grid = resample(prior_image.with_array(tumour.astype(np.uint8)), brain_mask.geometry,
                       registration.transform, interpolator=sitk.sitkNearestNeighbor)
    mask: Mask = np.asarray(on_grid.array) > 0
    ml = float(tumour.sum()) * prior_image.voxel_volume_mm3 / 1000.0
    return PriorBed(mask, f"the prior's tumour ({ml:.1f} mL) placed on this study: {where}")
