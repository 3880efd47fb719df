"""The network hook of the change pipelines: an optional segmentation network, served by the inference
backend like every other model, whose candidates join those of the classical method.

What such a model must accept and return is its model card (``models/repository/<name>/model_card.yaml``):
one input tensor [1, C, D, H, W] holding the channels named by ``input_roles`` in order, each z-scored
with the brain's median and robust spread (normalisation ``brain_robust_zscore``); one output
[1, K, D, H, W] whose channel named ``label`` (``new_lesion`` for MS, ``haematoma`` for CT) is a
probability (``output_activation``: ``sigmoid``, or ``softmax`` over K, or ``none`` when the network
already returns probabilities). The whole volume is one input: a network with a fixed patch size must
say so in ``patch_size`` and is refused here rather than run on a grid it was not made for."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from neuroflow.core.inference import InferenceBackend
from neuroflow.core.model_card import ModelCard, ModelRef

# Model-card normalisation name this module implements.
BRAIN_ROBUST_ZSCORE = "brain_robust_zscore"
MS_LESION_LABEL = "new_lesion"
HAEMATOMA_LABEL = "haematoma"
THRESHOLD = 0.5

FloatArray = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]


def network_candidates(backend: InferenceBackend, model: ModelRef, baseline: FloatArray, followup: FloatArray,
                       brain: BoolArray) -> BoolArray:
    """Where the MS lesion network ``model`` sees a new lesion (probability > 0.5) inside ``brain``; the
    two channels are the baseline (registered, matched) and the follow-up FLAIR on the follow-up grid."""
    return probability_mask(backend, model, [baseline, followup], brain, MS_LESION_LABEL)


def probability_mask(backend: InferenceBackend, model: ModelRef, channels: list[FloatArray], brain: BoolArray,
                     label: str) -> BoolArray:
    """The voxels of ``brain`` where ``model``'s ``label`` channel exceeds 0.5, for ``channels`` on one grid.

    Raises ValueError when the card does not describe a model this hook can run (other normalisation,
    no ``label`` channel, wrong number of input channels, a fixed patch size), and InferenceUnavailable
    (from the backend) when the model cannot be served."""
    card = backend.card(model)
    _check(card, label, len(channels))
    reference = channels[-1][brain] if brain.any() else channels[-1].ravel()
    level = float(np.median(reference))
    spread = max(1.4826 * float(np.median(np.abs(reference - level))), 1e-6)
    image = np.stack([(c - level) / spread for c in channels]).astype(np.float32)[None]
    output = backend.infer(model, {card.inputs[0].name: image})[card.outputs[0].name]
    scores = np.asarray(output[0], dtype=np.float32)
    channel = card.labels.index(label)
    if card.output_activation == "sigmoid":
        probability = 1.0 / (1.0 + np.exp(-np.clip(scores[channel], -60.0, 60.0)))
    elif card.output_activation == "softmax":
        shifted = np.exp(scores - scores.max(axis=0, keepdims=True))
        probability = shifted[channel] / shifted.sum(axis=0)
    else:
        probability = scores[channel]
    return np.asarray((probability > THRESHOLD) & brain)


def _check(card: ModelCard, label: str, n_channels: int) -> None:
    where = f"model {card.name}:{card.version}"
    if card.normalisation != BRAIN_ROBUST_ZSCORE:
        raise ValueError(f"{where} expects normalisation {card.normalisation!r}; the change pipelines' network "
                         f"hook implements {BRAIN_ROBUST_ZSCORE!r}")
    if label not in card.labels:
        raise ValueError(f"{where} has no {label!r} output channel (labels {card.labels})")
    if card.input_roles and len(card.input_roles) != n_channels:
        raise ValueError(f"{where} takes {len(card.input_roles)} channels ({card.input_roles}); "
                         f"this hook gives {n_channels}")
    if card.patch_size:
        raise ValueError(f"{where} has a fixed patch size {card.patch_size}; the change pipelines' network hook "
                         "runs whole volumes")
    if card.output_activation not in ("sigmoid", "softmax", "none"):
        raise ValueError(f"{where}: unknown output activation {card.output_activation!r}")
