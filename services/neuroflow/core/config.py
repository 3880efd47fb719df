"""Configuration, read once at start and passed in (never re-read in a loop). Environment variables
prefixed NEUROFLOW_ override the defaults; site rules come from a YAML file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from neuroflow.core.model_card import ModelRef

REPOSITORY_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MODEL_REPOSITORY = REPOSITORY_ROOT / "models" / "repository"

GLIOMA_PIPELINE = "glioma"


class PipelineModels(BaseSettings):
    """The model versions a site runs, pinned so an upgrade is a deliberate configuration change."""

    skull_strip: ModelRef = ModelRef(name="deepbet", version=1)
    skull_strip_bbox: ModelRef = ModelRef(name="deepbet_bbox", version=1)
    glioma: ModelRef = ModelRef(name="glioma_unet", version=1)


class NeuroflowSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEUROFLOW_", env_nested_delimiter="__")

    site: str = "local"
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    models: PipelineModels = Field(default_factory=PipelineModels)
    site_rules: Path | None = None  # YAML with series classification overrides
    inference_threads: int = 0  # 0: ONNX Runtime picks (all cores)
    # Isotropic grid every glioma input is resampled onto, in mm.
    target_spacing_mm: float = 1.0
    # Sliding window: overlap between neighbouring patches as a fraction of the patch size.
    window_overlap: float = 0.5
    window_batch_size: int = 2
