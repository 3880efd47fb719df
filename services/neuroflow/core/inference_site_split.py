"""Inference split between the site's own backend and the shared GPU tier, so that the shared tier never
receives a whole head (``inference.shared_tier_skull_stripped_only``).

Skull stripping is the one network whose input shows the whole head (the face included); the glioma network
gets volumes normalised inside the brain mask, zero outside it (preprocess/normalise.py). With the option
on, the models named as shared (glioma segmentation) go to Triton and every other model (skull stripping,
the optional change-pipeline networks, whose inputs are not masked) runs on the site's ONNX Runtime."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping

from neuroflow.core.inference import Array, InferenceBackend
from neuroflow.core.model_card import ModelCard, ModelRef


class SiteSplitBackend(InferenceBackend):
    """``shared_models`` run on ``shared`` (the shared GPU tier); every other model on ``local`` (the site's)."""

    def __init__(self, local: InferenceBackend, shared: InferenceBackend, *,
                 shared_models: Collection[ModelRef]) -> None:
        self.local = local
        self.shared = shared
        self.shared_models = frozenset(shared_models)

    def backend_for(self, model: ModelRef) -> InferenceBackend:
        return self.shared if model in self.shared_models else self.local

    def ready(self, model: ModelRef) -> bool:
        return self.backend_for(model).ready(model)

    def card(self, model: ModelRef) -> ModelCard:
        return self.backend_for(model).card(model)

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return self.backend_for(model).infer(model, inputs)

    def infer_batches(self, model: ModelRef, batches: Iterable[Mapping[str, Array]]) -> Iterator[dict[str, Array]]:
        return self.backend_for(model).infer_batches(model, batches)
