"""Model cards: what a model segments, what it takes and how to prepare its input. The services read
the card, never hard-coded numbers, so a model is swapped by changing the repository, not the code."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field

from neuroflow.core.errors import InferenceUnavailable


class ModelRef(BaseModel, frozen=True):
    name: str
    version: int = Field(ge=1)

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class TensorSpec(BaseModel, frozen=True):
    name: str
    shape: list[int]  # -1 for a dynamic axis
    dtype: str = "float32"


class ModelCard(BaseModel, frozen=True):
    name: str
    version: int
    task: str
    input_roles: list[str] = Field(default_factory=list)  # series roles, in channel order
    # Roles of which a study needs at least one when the model was trained to work with the others missing
    # (a missing channel is fed as zeros after normalisation); empty: every input role is required.
    min_roles_any: list[str] = Field(default_factory=list)
    spacing_mm: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    normalisation: str = ""
    patch_size: list[int] = Field(default_factory=list)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    labels: list[str] = Field(default_factory=list)  # output channels, in order
    output_activation: str = "sigmoid"
    training_data: str = ""
    license: str = ""
    intended_use: str = "Research use only. Not for clinical use; output is for review, never a diagnosis."
    notes: str = ""


def model_card_path(repository: Path, model: ModelRef) -> Path:
    """The card file of ``model`` (every version of it) in the model repository."""
    return repository / model.name / "model_card.yaml"


def load_model_card(repository: Path, model: ModelRef) -> ModelCard:
    path = model_card_path(repository, model)
    if not path.is_file():
        raise InferenceUnavailable(f"model {model}: no model card at {path}")
    cards = yaml.safe_load(path.read_text())
    # One card file per model, with an entry per version so that a pinned old version stays described.
    for entry in cards.get("versions", []):
        if int(entry["version"]) == model.version:
            return ModelCard(name=model.name, **{k: v for k, v in entry.items() if k != "name"})
    raise InferenceUnavailable(f"model {model}: version {model.version} not described in {path}")
