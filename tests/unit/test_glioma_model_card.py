"""The glioma model card's promise about missing sequences: a version declares ``min_roles_any`` only
when its weights were trained with sequence dropout keeping exactly those roles (recorded by the export
in ``export.json``), and those roles are input roles spelled as the card spells them."""

from __future__ import annotations

import json

import pytest
import yaml

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY, NeuroflowSettings, PipelineModels
from neuroflow.core.model_card import ModelRef, load_model_card

GLIOMA = DEFAULT_MODEL_REPOSITORY / "glioma_unet"


def _versions() -> list[int]:
    return [int(v["version"]) for v in yaml.safe_load((GLIOMA / "model_card.yaml").read_text())["versions"]]


def test_every_glioma_version_has_its_model_file_and_export_record() -> None:
    for version in _versions():
        assert (GLIOMA / str(version) / "model.onnx").is_file()
        assert json.loads((GLIOMA / str(version) / "export.json").read_text())["version"] == version


def test_min_roles_any_is_declared_only_for_weights_trained_with_sequence_dropout() -> None:
    declared = []
    for version in _versions():
        card = load_model_card(DEFAULT_MODEL_REPOSITORY, ModelRef(name="glioma_unet", version=version))
        training = json.loads((GLIOMA / str(version) / "export.json").read_text())["training"]
        dropout = float(training.get("dropout", 0.0))
        if card.min_roles_any:
            declared.append(version)
            assert dropout > 0, f"version {version} declares min_roles_any but was trained without dropout"
            assert training["keep_one_of"] == card.min_roles_any
            assert set(card.min_roles_any) <= set(card.input_roles)
        else:
            assert dropout == 0
    assert declared == [2, 3, 4]


def test_the_default_glioma_version_is_described_by_the_card() -> None:
    default = PipelineModels().glioma
    assert default.version in _versions()


def test_a_site_pins_a_version_alone_and_keeps_the_model_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """What EVALUATION.md tells a site (``NEUROFLOW_MODELS__GLIOMA__VERSION=3``) works; the whole reference as
    JSON (what the Helm chart sets) still does; a version the card does not describe is a clear error later,
    at the card."""
    monkeypatch.setenv("NEUROFLOW_MODELS__GLIOMA__VERSION", "3")
    monkeypatch.setenv("NEUROFLOW_MODELS__METASTASES", '{"name": "metastases_unet", "version": 2}')
    models = NeuroflowSettings().models
    assert models.glioma == ModelRef(name="glioma_unet", version=3)
    assert models.metastases == ModelRef(name="metastases_unet", version=2)
    assert models.skull_strip == PipelineModels.model_fields["skull_strip"].default
    for pinned in (models.glioma, models.metastases):
        assert load_model_card(DEFAULT_MODEL_REPOSITORY, pinned).version == pinned.version
    monkeypatch.setenv("NEUROFLOW_MODELS__GLIOMA__VERSION", "0")
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        NeuroflowSettings()
