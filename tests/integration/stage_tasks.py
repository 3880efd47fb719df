"""What the orchestrator would send a worker, built in a test without one: the TaskRequested of a stage from the
pipeline's own spec (orchestrator.pipelines.build_input), and a ball of voxels on the small 1 mm test grid that
the distributed pipeline tests share (48 x 48 x 20 voxels centred on the patient origin)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from neuroflow.core import topics
from neuroflow.orchestrator.pipelines import PipelineSpec, build_input
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2, tasks_pb2


def stage_task(stage: common_pb2.Stage.ValueType, spec: PipelineSpec, ready: events_pb2.StudyReady,
               done: dict[common_pb2.Stage.ValueType, tasks_pb2.TaskDone], workflow_id: str) -> tasks_pb2.TaskRequested:
    """Attempt 1 of ``stage`` of ``workflow_id``, its input built from ``ready`` and the stages ``done``."""
    task = tasks_pb2.TaskRequested(schema_version=topics.SCHEMA_VERSION, workflow_id=workflow_id, stage=stage,
                                   attempt=1, idempotency_key=f"{workflow_id}.{stage}", study=ready.study,
                                   pipeline=ready.pipeline)
    stage_input = build_input(stage, spec, ready, done, destination="")
    if isinstance(stage_input, tasks_pb2.PreprocessInput):
        task.preprocess.CopyFrom(stage_input)
    elif isinstance(stage_input, tasks_pb2.SegmentationInput):
        task.segmentation.CopyFrom(stage_input)
    else:
        assert isinstance(stage_input, tasks_pb2.ResultsInput)
        task.results.CopyFrom(stage_input)
    return task


def ball(centre_mm: tuple[float, float, float], radius_mm: float) -> npt.NDArray[np.bool_]:
    """A ball on the test grid (Z, Y, X = 20, 48, 48 voxels of 1 mm, origin at (-24, -24, -10) mm)."""
    k, j, i = np.mgrid[0:20, 0:48, 0:48]
    x, y, z = i - 24.0, j - 24.0, k - 10.0
    return np.asarray((x - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (z - centre_mm[2]) ** 2 <= radius_mm**2)
