"""Brain metastases (issue 15): the enhancing-metastasis probability from the T1CE (and FLAIR when present) by
the metastases network over the brain, then lesion by lesion on the T1CE as acquired: the probability is
resampled onto the T1CE's own grid, thresholded, split into connected lesions and each measured
(``label_lesions``: volume, longest axial diameter, centroid in patient coordinates, confidence). Measuring on
the T1CE grid keeps the report, the SEG and the RTSTRUCT on the voxels a planner sees."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from neuroflow.core.errors import StudyError
from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.sequence_subsets import PipelineInputs
from neuroflow.core.volume import Volume
from neuroflow.segmentation.glioma import predict_stack

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
    progress: Callable[[int, int], None] | None = None,
) -> Volume:
    """The metastasis probability (float32, on ``mask``'s grid, 0 outside the brain) from the normalised
    inputs in the model card's channel order; a role the card may go without (FLAIR) is a zero channel.
    Refuses a model whose card does not take this study's roles or does not output one metastasis channel."""
    card = backend.card(model)
    inputs = PipelineInputs.of_card(card)
    if not inputs.qualifies(set(normalised)) or card.labels != [METASTASIS_LABEL]:
        raise StudyError(study_key, f"model {model} takes {card.input_roles} (at least {card.min_roles_any}) and "
                         f"outputs {card.labels}; the metastases pipeline provides {sorted(normalised)} and needs "
                         f"the output [{METASTASIS_LABEL}]", stage="segmentation")
    absent = np.zeros(mask.array.shape, dtype=np.float32)
    stack = np.stack([np.asarray(normalised[role].array, dtype=np.float32) if role in normalised else absent
                      for role in inputs.roles])
    probability = predict_stack(stack, mask.array > 0, backend, model, overlap=overlap, batch_size=batch_size,
                                progress=progress)
    return mask.with_array(probability[0])
