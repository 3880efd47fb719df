"""Brain metastases (issue 15): the enhancing-metastasis probability from the T1CE (and FLAIR when present) by
the metastases network over the brain, then lesion by lesion on the T1CE as acquired: the probability is
resampled onto the T1CE's own grid, thresholded, split into connected lesions and each measured
(``label_lesions``: volume, longest axial diameter, centroid in patient coordinates, confidence). Measuring on
the T1CE grid keeps the report, the SEG and the RTSTRUCT on the voxels a planner sees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import numpy.typing as npt

from neuroflow.core.config import Mirror
from neuroflow.core.errors import StudyError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sequence_subsets import PipelineInputs
from neuroflow.core.volume import Volume
from neuroflow.segmentation.glioma import predict_stack
from neuroflow.segmentation.mirrors import flip_array_axis

METASTASIS_LABEL = "metastasis"


def predict_metastases(
    normalised: dict[SeriesRole, Volume],
    mask: Volume,
    backend: InferenceBackend,
    model: ModelRef,
    *,
    overlap: float,
    batch_size: int,
    study_key: str,
    mirrors: Sequence[Mirror] = (),
    progress: Callable[[int, int], None] | None = None,
) -> Volume:
    """The metastasis probability (float32, on ``mask``'s grid, 0 outside the brain) from the normalised
    inputs in the model card's channel order; a role the card may go without (FLAIR) is a zero channel.
    With ``mirrors``, the mean of the plain prediction and one per mirror (:func:`mirror_mean`). Refuses a
    model whose card does not take this study's roles or does not output one metastasis channel."""
    card = backend.card(model)
    inputs = PipelineInputs.of_card(card)
    if not inputs.qualifies(set(normalised)) or card.labels != [METASTASIS_LABEL]:
        raise StudyError(study_key, f"model {model} takes {card.input_roles} (at least {card.min_roles_any}) and "
                         f"outputs {card.labels}; the metastases pipeline provides {sorted(normalised)} and needs "
                         f"the output [{METASTASIS_LABEL}]", stage="segmentation")
    absent = np.zeros(mask.array.shape, dtype=np.float32)
    stack = np.stack([np.asarray(normalised[role].array, dtype=np.float32) if role in normalised else absent
                      for role in inputs.roles])
    probability = mirror_mean(stack, mask.array > 0, backend, model, overlap=overlap, batch_size=batch_size,
                              mirror_axes=[flip_array_axis(mask.geometry, m) for m in mirrors], progress=progress)
    return mask.with_array(probability[0])


def mirror_mean(
    stack: npt.NDArray[np.float32],
    brain: npt.NDArray[np.bool_],
    backend: InferenceBackend,
    model: ModelRef,
    *,
    overlap: float,
    batch_size: int,
    mirror_axes: Sequence[int] = (),
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """The mean probability of the plain prediction of ``stack`` and one per array axis in ``mirror_axes``
    (input mirrored along it, output mirrored back: ``predict_stack``). The network learnt from mirrored
    patches, so each pass is an equally valid estimate made through differently oriented filters; their mean
    is steadier than one pass (nnU-Net's test-time mirroring). Each mirror costs one more sliding window.
    ``progress`` counts the windows of every pass as one job."""
    passes: list[tuple[int, ...]] = [(), *((axis,) for axis in mirror_axes)]
    total = np.zeros((len(backend.card(model).labels), *stack.shape[1:]), dtype=np.float32)
    for before, flip_axes in enumerate(passes):
        step = None if progress is None else partial(_pass_progress, progress, before, len(passes))
        total += predict_stack(stack, brain, backend, model, overlap=overlap, batch_size=batch_size,
                               flip_axes=flip_axes, progress=step)
    total /= len(passes)
    return total


def _pass_progress(progress: Callable[[int, int], None], before: int, passes: int, windows: int, of: int) -> None:
    progress(before * of + windows, passes * of)
