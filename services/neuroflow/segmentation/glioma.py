"""Glioma segmentation: the region network over the brain's bounding box by sliding window, then the
published post-processing. Works on the common 1 mm grid produced by preprocessing."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from neuroflow.core.errors import StudyError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.labels import TUMOUR_REGIONS
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sequence_subsets import PipelineInputs
from neuroflow.segmentation.postprocess import bounding_box, postprocess, threshold_regions, to_label_map
from neuroflow.segmentation.sliding_window import sigmoid, sliding_window_inference

if TYPE_CHECKING:  # only annotations here: the inference part imports without SimpleITK (scripts/bench_gpu.py)
    from neuroflow.core.volume import Volume

# Context kept around the brain when cropping, in voxels: the network needs to see the brain's edge.
_CROP_MARGIN = 8


def predict_regions(
    normalised: dict[SeriesRole, Volume],
    mask: Volume,
    backend: InferenceBackend,
    model: ModelRef,
    *,
    overlap: float,
    batch_size: int,
    study_key: str,
    flip_axes: tuple[int, ...] = (),
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Per-region probabilities (WT, TC, ET; on ``mask``'s grid) from the normalised input volumes,
    stacked in the channel order the model card names. Zero outside the brain mask. A role the study
    lacks is an all-zero channel when the card says the model was trained for it (``min_roles_any``,
    core/sequence_subsets.py). ``flip_axes``: see :func:`predict_stack`.

    Refuses a model whose card asks for a role preprocessing did not produce (and does not take the
    study without it), or whose outputs are not the glioma regions."""
    card = backend.card(model)
    inputs = PipelineInputs.of_card(card)
    if not inputs.qualifies(set(normalised)) or card.labels != [r.value for r in TUMOUR_REGIONS]:
        needs = (f"at least one of {card.min_roles_any} of the inputs {card.input_roles}" if inputs.accepts_subsets
                 else f"inputs {card.input_roles}")
        raise StudyError(
            study_key,
            f"model {model} expects {needs} and outputs {card.labels}; the glioma "
            f"pipeline provides {sorted(normalised)} and needs outputs {[r.value for r in TUMOUR_REGIONS]}",
            stage="segmentation",
        )
    absent = np.zeros(mask.array.shape, dtype=np.float32)  # z-scored "no signal": what dropout trained on
    stack = np.stack([np.asarray(normalised[role].array, dtype=np.float32) if role in normalised else absent
                      for role in inputs.roles])
    return predict_stack(stack, mask.array > 0, backend, model, overlap=overlap, batch_size=batch_size,
                         flip_axes=flip_axes, progress=progress)


def predict_stack(
    stack: npt.NDArray[np.float32],
    brain: npt.NDArray[np.bool_],
    backend: InferenceBackend,
    model: ModelRef,
    *,
    overlap: float,
    batch_size: int,
    flip_axes: tuple[int, ...] = (),
    progress: Callable[[int, int], None] | None = None,
) -> npt.NDArray[np.float32]:
    """Per-output-channel probabilities (the card's ``labels``; the glioma regions, or the metastases model's one
    channel) of the input ``stack`` (C, Z, Y, X, the model card's channel order) over
    ``brain``'s bounding box, zero outside ``brain``. ``flip_axes`` (array axes of the volume, 0-2): the
    input is mirrored along them before inference and the output mirrored back, a test-time ensemble
    member on the same grid as the plain prediction."""
    card = backend.card(model)
    if flip_axes:
        stack = np.ascontiguousarray(np.flip(stack, axis=tuple(1 + a for a in flip_axes)))
        brain = np.flip(brain, axis=flip_axes)
    box = bounding_box(brain, _CROP_MARGIN) or tuple(slice(0, n) for n in brain.shape)
    channels = len(card.labels) or len(TUMOUR_REGIONS)
    probabilities = np.zeros((channels, *stack.shape[1:]), dtype=np.float32)
    probabilities[(slice(None), *box)] = sliding_window_inference(
        np.ascontiguousarray(stack[(slice(None), *box)]),
        backend,
        model,
        patch=(card.patch_size[0], card.patch_size[1], card.patch_size[2]),
        out_channels=channels,
        input_name=card.inputs[0].name,
        output_name=card.outputs[0].name,
        overlap=overlap,
        batch_size=batch_size,
        activation=sigmoid if card.output_activation == "sigmoid" else None,
        progress=progress,
    )
    # Tumour outside the brain mask is not tumour (skull, vessels, fat enhance too).
    probabilities *= brain[None]
    if flip_axes:
        probabilities = np.ascontiguousarray(np.flip(probabilities, axis=tuple(1 + a for a in flip_axes)))
    return probabilities


def label_map(probabilities: npt.NDArray[np.float32], grid: Volume) -> Volume:
    """The post-processed BraTS label map (uint8) on ``grid``'s geometry."""
    masks = postprocess(threshold_regions(probabilities), grid.voxel_volume_mm3)
    return grid.with_array(to_label_map(masks))
