"""The segmentation stage as a task handler of the distributed runtime: preprocessed volumes in, the label
map out (in the volume store) with the region volumes. The work itself is ``predict_regions`` and
``label_map``, the same functions the embedded runtime runs."""

from __future__ import annotations

import logging
import time

import numpy as np

from neuroflow.core.atlas import attach_transform, brain_to_template
from neuroflow.core.config import GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.handoff import SUMMARY_META_KEY, PreprocessSummary
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.labels import REGION_LABELS
from neuroflow.core.lesions import LESION_THRESHOLD
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.core.volume_store import VolumeStore
from neuroflow.proto.neuroflow.v1 import tasks_pb2
from neuroflow.segmentation.cavity import postoperative_labels
from neuroflow.segmentation.glioma import label_map, predict_regions
from neuroflow.segmentation.metastases import predict_metastases
from neuroflow.segmentation.review import record_review, review_segmentation

log = logging.getLogger(__name__)

LABEL_MAP_NAME = "label_map"
# What the segmentation stage knows of why a glioma_postop study is post-operative: ingest decided it (the
# evidence is in its routing log and audit; StudyReady does not carry it).
ROUTED_POSTOPERATIVE = ("routed to glioma_postop by ingest (its evidence, the study's descriptions or a prior with "
                        "tumour, is in the hand-on audit)")
_MM3_PER_ML = 1000.0


def region_volumes_ml(labels: Volume) -> dict[str, float]:
    """Millilitres of each tumour region (WT, TC, ET) of a BraTS label map, by region value."""
    ml_per_voxel = labels.voxel_volume_mm3 / _MM3_PER_ML
    return {region.value: int(np.isin(labels.array, [int(label) for label in region_labels]).sum()) * ml_per_voxel
            for region, region_labels in REGION_LABELS.items()}


class SegmentationHandler:
    """``TaskRequested`` (stage segmentation) -> ``SegmentationOutput``. The label map is stored under
    ``<study_key>/<workflow_id>/label_map`` with the brain mask's meta (the preprocess summary, to which
    this stage adds its own step timings), so the results stage finds everything on one volume."""

    def __init__(self, volumes: VolumeStore, backend: InferenceBackend, settings: NeuroflowSettings) -> None:
        self._volumes = volumes
        self._backend = backend
        self._settings = settings

    def __call__(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.SegmentationOutput:
        key, request = task.study.study_key, task.segmentation
        normalised = {SeriesRole(role): self._volumes.get_ref(ref) for role, ref in request.volumes.items()}
        mask = self._volumes.get_ref(request.brain_mask)
        model = ModelRef(name=request.model.name, version=request.model.version)
        if task.pipeline == METASTASES_PIPELINE:
            return self._metastases(task, normalised, mask, model)
        started = time.perf_counter()
        probabilities = predict_regions(normalised, mask, self._backend, model,
                                        overlap=self._settings.window_overlap,
                                        batch_size=self._settings.window_batch_size, study_key=key)
        segmented = time.perf_counter()
        labels = label_map(probabilities, mask)
        postprocessed = time.perf_counter()
        registration = PreprocessSummary.of(mask).registration if SUMMARY_META_KEY in mask.meta else {}
        review = review_segmentation(normalised, mask, probabilities, labels, self._backend, model, self._settings,
                                     study_key=key, registration=registration)
        if task.pipeline == GLIOMA_POSTOP_PIPELINE:  # the resection cavity, never counted as tumour
            prior = (np.asarray(self._volumes.get_ref(request.prior_tumour).array) > 0
                     if request.HasField("prior_tumour") else None)
            labels = postoperative_labels(labels, normalised, mask, evidence=[ROUTED_POSTOPERATIVE],
                                          prior_tumour=prior,
                                          prior_tumour_note=PreprocessSummary.of(mask).prior_tumour
                                          if SUMMARY_META_KEY in mask.meta else "")
        record_review(review, site=task.study.site, pipeline=task.pipeline, model=model)
        timings = {"segment": round(segmented - started, 3),
                   "postprocess": round(postprocessed - segmented, 3),
                   "review": round(time.perf_counter() - postprocessed, 3)}
        if SUMMARY_META_KEY in mask.meta:
            labels = PreprocessSummary.of(mask).with_timings(timings).attach(labels)
        # Beside the summary, as its own key: a results service that predates it ignores it.
        labels = review.attach(labels)
        stored = self._volumes.put_ref(f"{key}/{task.workflow_id}/{LABEL_MAP_NAME}", labels)
        volumes = region_volumes_ml(labels)
        log.info("study %s: segmentation of workflow %s: WT %.1f mL in %.1f s, %d alarm(s)%s", key,
                 task.workflow_id, volumes.get("WT", 0.0), timings["segment"], review.risk_score,
                 ", needs review" if review.needs_review else "")
        return tasks_pb2.SegmentationOutput(label_map=stored, region_volumes_ml=volumes, model=request.model)

    def _metastases(self, task: tasks_pb2.TaskRequested, normalised: dict[SeriesRole, Volume], mask: Volume,
                    model: ModelRef) -> tasks_pb2.SegmentationOutput:
        """The metastases pipeline hands on the probability (on the common grid, with the preprocess summary),
        not a label map: the results stage splits and measures the lesions on the T1CE's own grid, as the
        embedded runtime does."""
        key = task.study.study_key
        started = time.perf_counter()
        probability = predict_metastases(normalised, mask, self._backend, model,
                                         overlap=self._settings.window_overlap,
                                         batch_size=self._settings.window_batch_size, study_key=key,
                                         mirrors=self._settings.segmentation.metastases_mirrors)
        segmented = time.perf_counter()
        # The brain onto the atlas template, once per study, here where the brain mask is: the results stage
        # names each lesion's centroid with it. Skipped when no voxel can be lesion.
        if bool((probability.array >= LESION_THRESHOLD).any()):
            probability = attach_transform(probability, brain_to_template(
                normalised[SeriesRole.T1CE], mask, study_key=key, templates=self._settings.longitudinal.atlas_dir))
        if SUMMARY_META_KEY in mask.meta:
            timings = {"segment": round(segmented - started, 3), "locate": round(time.perf_counter() - segmented, 3)}
            probability = PreprocessSummary.of(mask).with_timings(timings).attach(probability)
        stored = self._volumes.put_ref(f"{key}/{task.workflow_id}/{LABEL_MAP_NAME}", probability)
        log.info("study %s: metastasis probability of workflow %s in %.1f s", key, task.workflow_id,
                 time.perf_counter() - started)
        return tasks_pb2.SegmentationOutput(label_map=stored, model=task.segmentation.model)
