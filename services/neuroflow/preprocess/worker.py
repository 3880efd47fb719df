"""The preprocess stage as a task handler of the distributed runtime: the routed series from the DICOM
source in, the normalised volumes and brain mask in the volume store out. The work itself is
``preprocess_glioma``, the same function the embedded runtime runs."""

from __future__ import annotations

import logging

import numpy as np
from pydicom.dataset import Dataset

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.dicom_io import DicomSource, find_series
from neuroflow.core.errors import MissingSequence
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sequence_subsets import glioma_reference_role
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Volume
from neuroflow.core.volume_members import volume_instances
from neuroflow.core.volume_store import VolumeStore
from neuroflow.preprocess.glioma_inputs import preprocess_glioma
from neuroflow.preprocess.prior_bed import PriorBed, prior_tumour_bed
from neuroflow.proto.neuroflow.v1 import tasks_pb2

log = logging.getLogger(__name__)

STEPS = ("read_series", "convert", "orientation", "register", "skull_strip", "normalise")
BRAIN_MASK_NAME = "brain_mask"
PRIOR_TUMOUR_NAME = "prior_tumour"


def volume_key(task: tasks_pb2.TaskRequested, name: str) -> str:
    """Volume-store key of a workflow's volume: ``<study_key>/<workflow_id>/<name>``."""
    return f"{task.study.study_key}/{task.workflow_id}/{name}"


class PreprocessHandler:
    """``TaskRequested`` (stage preprocess) -> ``PreprocessOutput``. Volumes are stored under
    ``<study_key>/<workflow_id>/<role>`` and ``.../brain_mask`` (a retry overwrites the same keys); the
    brain mask's meta carries the :class:`PreprocessSummary` the results stage needs. A post-operative study's
    prior (``prior_study_instance_uid``) has its tumour placed on the same grid, ``.../prior_tumour``."""

    def __init__(self, source: DicomSource, volumes: VolumeStore, backend: InferenceBackend,
                 settings: NeuroflowSettings) -> None:
        self._source = source
        self._volumes = volumes
        self._backend = backend
        self._settings = settings

    def __call__(self, task: tasks_pb2.TaskRequested) -> tasks_pb2.PreprocessOutput:
        key = task.study.study_key
        clock = StageClock(STEPS, progress=lambda line: log.info("study %s: preprocess %s", key, line.strip()))
        with clock.stage("read_series"):
            series = find_series(self._source, task.study, task.preprocess.series, stage="preprocess")
            reference = SeriesRole(task.preprocess.reference_role) if task.preprocess.reference_role else None
            if reference is not None and reference not in series:
                raise MissingSequence(key, f"the reference series role {reference} is not among the routed "
                                           f"series {sorted(series)}", stage="preprocess")
            instances: dict[SeriesRole, list[Dataset]] = {
                role: self._source.read_instances(s) for role, s in series.items()}
        models = self._settings.models
        pre = preprocess_glioma(instances, self._backend, (models.skull_strip_bbox, models.skull_strip),
                                spacing_mm=self._settings.target_spacing_mm, study_key=key, clock=clock,
                                volumes_of={role: s.volume for role, s in series.items()}, reference_role=reference)
        summary = pre.summary(models.skull_strip, clock.timings)
        output = tasks_pb2.PreprocessOutput()
        if task.preprocess.prior_study_instance_uid:
            role = reference or glioma_reference_role(instances)
            image = series_to_volume(volume_instances(instances[role], study_key=key, volume=series[role].volume),
                                     study_key=key)
            bed = self._prior_bed(task.preprocess.prior_study_instance_uid, image, pre.brain_mask, key)
            log.info("study %s: preprocess: %s", key, bed.note)
            summary = summary.model_copy(update={"prior_tumour": bed.note})
            if bed.mask is not None:
                output.prior_tumour.CopyFrom(self._volumes.put_ref(
                    volume_key(task, PRIOR_TUMOUR_NAME), pre.brain_mask.with_array(bed.mask.astype(np.uint8))))
        output.brain_mask.CopyFrom(
            self._volumes.put_ref(volume_key(task, BRAIN_MASK_NAME), summary.attach(pre.brain_mask)))
        for role, volume in pre.normalised.items():
            output.volumes[role.value].CopyFrom(self._volumes.put_ref(volume_key(task, role.value.lower()), volume))
        log.info("study %s: preprocess stored %d volumes and the brain mask for workflow %s", key,
                 len(output.volumes), task.workflow_id)
        return output

    def _prior_bed(self, prior_uid: str, reference: Volume, brain_mask: Volume, key: str) -> PriorBed:
        """The prior's tumour placed on this study (preprocess.prior_bed), or why not: a prior the source no longer
        holds costs the bed, never the study."""
        prior, _skipped = self._source.index_study(prior_uid)
        if prior is None:
            return PriorBed(None, "the prior study is no longer in the source")
        return prior_tumour_bed(self._source, prior, reference, brain_mask, self._settings, study_key=key)
