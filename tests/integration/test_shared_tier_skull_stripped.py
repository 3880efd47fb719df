"""``inference.shared_tier_skull_stripped_only``: the shared GPU tier receives brain-masked tensors only.

The glioma pipeline's own steps (preprocess_glioma, predict_regions) run on a real study given a bright
"skull" shell around the brain, through the backend the settings build: skull stripping runs on the site's
ONNX Runtime, and what would go to Triton is recorded here instead (a recorder of our own: what is checked is
what our code sends, tests/integration/test_triton_tls.py covers the server). Every recorded voxel outside
the brain mask is zero."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from neuroflow.core.config import InferenceSettings, NeuroflowSettings
from neuroflow.core.inference import Array, InferenceBackend, OnnxRuntimeBackend
from neuroflow.core.inference_site_split import SiteSplitBackend
from neuroflow.core.inference_triton import TritonBackend, build_inference_backend
from neuroflow.core.model_card import ModelCard, ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Geometry, Volume, resample
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.preprocess.glioma_inputs import preprocess_glioma
from neuroflow.preprocess.worker import STEPS
from neuroflow.segmentation.glioma import predict_regions
from tests.e2e.conftest import tcga_volumes

SPACING_MM = 2.0  # coarser than the pipeline's 1 mm: fewer patches, the same code path


class RecordingSharedTier(InferenceBackend):
    """Stands for Triton: keeps every tensor it is sent and answers zeros of the card's output shape."""

    def __init__(self, cards: InferenceBackend) -> None:
        self._cards = cards
        self.sent: list[tuple[ModelRef, Array]] = []

    def card(self, model: ModelRef) -> ModelCard:
        return self._cards.card(model)

    def ready(self, model: ModelRef) -> bool:
        return True

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        card = self.card(model)
        (tensor,) = inputs.values()
        self.sent.append((model, np.array(tensor)))
        shape = (tensor.shape[0], len(card.labels), *tensor.shape[2:])
        return {card.outputs[0].name: np.zeros(shape, dtype=np.float32)}


def _with_skull(volume: Volume) -> Volume:
    """The skull-stripped volume at SPACING_MM (fewer slices to write and read) given back a bright shell
    (scalp and bone) 2-5 voxels outside the brain."""
    g = volume.geometry
    size = tuple(round(n * s / SPACING_MM) for n, s in zip(g.size, g.spacing, strict=True))
    volume = resample(volume, Geometry((SPACING_MM,) * 3, g.origin, g.direction, (size[0], size[1], size[2])))
    head = volume.array > 0
    shell = ndimage.binary_dilation(head, iterations=5) & ~ndimage.binary_dilation(head, iterations=2)
    array = np.array(volume.array, dtype=np.float32)
    array[shell] = float(np.percentile(array[head], 95))
    return volume.with_array(array)


def _instances(folder: Path) -> dict[SeriesRole, list[pydicom.Dataset]]:
    written = write_study({r: _with_skull(v) for r, v in tcga_volumes().items()}, folder, seed="skull-only")
    return {role: [pydicom.dcmread(p) for p in series.paths] for role, series in written.series.items()}


def test_with_the_option_the_shared_tier_gets_only_brain_masked_glioma_tensors(tmp_path: Path) -> None:
    settings = NeuroflowSettings(inference=InferenceSettings(backend="triton", shared_tier_skull_stripped_only=True),
                                 inference_threads=2)
    backend = build_inference_backend(settings)
    assert isinstance(backend, SiteSplitBackend)
    assert isinstance(backend.local, OnnxRuntimeBackend) and isinstance(backend.shared, TritonBackend)
    shared = backend.shared = RecordingSharedTier(backend.local)
    models = settings.models

    pre = preprocess_glioma(_instances(tmp_path), backend, (models.skull_strip_bbox, models.skull_strip),
                            spacing_mm=SPACING_MM, study_key="k-skull-only", clock=StageClock(STEPS))
    assert not shared.sent  # skull stripping (the whole head) stayed at the site
    predict_regions(pre.normalised, pre.brain_mask, backend, models.glioma, overlap=0.25, batch_size=2,
                    study_key="k-skull-only")
    assert shared.sent and {model for model, _ in shared.sent} == {models.glioma}

    # The same sliding window over the brain mask itself gives, patch for patch, where the brain is.
    mask_recorder = RecordingSharedTier(backend.local)
    as_channels = {role: pre.brain_mask.with_array(pre.brain_mask.array.astype(np.float32)) for role in pre.normalised}
    predict_regions(as_channels, pre.brain_mask, mask_recorder, models.glioma, overlap=0.25, batch_size=2,
                    study_key="k-skull-only")
    assert len(mask_recorder.sent) == len(shared.sent)
    inside = outside = 0
    for (_, tensor), (_, brain) in zip(shared.sent, mask_recorder.sent, strict=True):
        assert tensor.shape == brain.shape
        assert not np.any(tensor[brain == 0]), "a voxel outside the brain mask was sent to the shared tier"
        inside += int(np.count_nonzero(tensor))
        outside += int(np.count_nonzero(brain == 0))
    assert inside > 0 and outside > 0  # the check looked at brain and at background


@pytest.mark.parametrize("option", [False, True])
def test_without_triton_the_option_changes_nothing_and_without_the_option_triton_runs_everything(
        option: bool) -> None:
    local = build_inference_backend(NeuroflowSettings(
        inference=InferenceSettings(shared_tier_skull_stripped_only=option)))
    assert isinstance(local, OnnxRuntimeBackend)
    if not option:
        assert isinstance(build_inference_backend(NeuroflowSettings(inference=InferenceSettings(backend="triton"))),
                          TritonBackend)
