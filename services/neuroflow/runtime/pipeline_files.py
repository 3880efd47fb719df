"""The files a pipeline reads at run time besides its studies: each model's card and, with ONNX Runtime in the
worker, its ONNX file (from ``model_repository``), and the atlases of ms_change and metastases
(``longitudinal.atlas_dir``). Whatever is listed here must ship in the image (tests/deploy/test_image_files.py
checks it for every pipeline the chart's examples enable)."""

from __future__ import annotations

from pathlib import Path

from neuroflow.core.config import (
    CHANGE_PIPELINES,
    GLIOMA_PIPELINE,
    GLIOMA_POSTOP_PIPELINE,
    HAEMATOMA_CHANGE_PIPELINE,
    METASTASES_PIPELINE,
    METASTASES_RESPONSE_PIPELINE,
    MS_CHANGE_PIPELINE,
    TUMOUR_GROWTH_PIPELINE,
    NeuroflowSettings,
    PipelineModels,
)
from neuroflow.core.inference import onnx_model_path
from neuroflow.core.model_card import ModelRef, model_card_path


def pipeline_models(pipeline: str, models: PipelineModels) -> list[ModelRef]:
    """The models ``pipeline`` runs, with the site's pinned versions. ValueError for an unknown pipeline."""
    skull_strip = [models.skull_strip_bbox, models.skull_strip]
    # tumour_growth measures with the glioma pipeline; glioma_postop is the glioma pipeline plus the cavity rules
    if pipeline in (GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, TUMOUR_GROWTH_PIPELINE):
        return [*skull_strip, models.glioma]
    if pipeline in (METASTASES_PIPELINE, METASTASES_RESPONSE_PIPELINE):  # the follow-up segments each study alike
        return [*skull_strip, models.metastases]
    if pipeline == MS_CHANGE_PIPELINE:  # skull strip of the follow-up FLAIR, the optional lesion network
        return skull_strip + ([models.ms_lesion] if models.ms_lesion else [])
    if pipeline == HAEMATOMA_CHANGE_PIPELINE:  # CT densities; the network only when one is pinned
        return [models.haematoma] if models.haematoma else []
    raise ValueError(f"unknown pipeline {pipeline!r}: expected one of "
                     f"{[GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE, *CHANGE_PIPELINES]}")


def pipeline_files(pipeline: str, settings: NeuroflowSettings) -> list[Path]:
    """Every file ``pipeline`` reads under ``settings`` (model cards, ONNX files, atlases)."""
    files: list[Path] = []
    for model in pipeline_models(pipeline, settings.models):
        files.append(model_card_path(settings.model_repository, model))
        if settings.inference.backend == "onnxruntime":  # on Triton, the server reads the model itself
            files.append(onnx_model_path(settings.model_repository, model))
    if pipeline in (MS_CHANGE_PIPELINE, METASTASES_PIPELINE):
        from neuroflow.core.atlas import atlas_files  # deferred: SimpleITK, only these pipelines need it

        files += atlas_files(settings.longitudinal.atlas_dir)
    return files
