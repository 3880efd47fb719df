"""New MS lesions by subtraction: a small version of the validation bench on a real brain (the goals of
issue 6 asserted), the refusals (2D FLAIR with thick slices, no FLAIR), the lesion-network hook run
through the real ONNX Runtime backend with a tiny model built here, and how its candidates join the
subtraction's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.errors import MissingSequence, StudyError
from neuroflow.core.inference import OnnxRuntimeBackend
from neuroflow.core.labels import ChangeLabel
from neuroflow.core.model_card import ModelRef
from neuroflow.core.roles import SeriesRole
from neuroflow.core.timing import StageClock
from neuroflow.core.volume import Geometry
from neuroflow.devtools import longitudinal_phantoms as lp
from neuroflow.devtools.dicom_writer import load_volume
from neuroflow.longitudinal.lesion_model import BRAIN_ROBUST_ZSCORE, MS_LESION_LABEL, network_candidates
from neuroflow.longitudinal.ms_lesions import (
    MIN_LESION_DIFFERENCE,
    MS_STAGES,
    _Candidate,
    _merge_network,
    detect_new_ms_lesions,
    insensitive_pair_warning,
)

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def settings() -> NeuroflowSettings:
    return NeuroflowSettings()


@pytest.fixture(scope="module")
def backend(settings: NeuroflowSettings) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(settings.model_repository)


def test_small_bench_finds_every_new_lesion_of_12_mm3_and_more_without_false_positives(
        settings: NeuroflowSettings, backend: OnnxRuntimeBackend) -> None:
    brain = next(b for b in lp.real_brains() if b.name == "tcga-du-7294")
    pair = lp.make_ms_pair(brain, seed=5)
    clock = StageClock(MS_STAGES)
    change = detect_new_ms_lesions({SeriesRole.FLAIR: pair.baseline}, {SeriesRole.FLAIR: pair.followup}, backend,
                                   settings.models, study_key="bench-small", clock=clock)
    score = lp.score_lesions(pair.truth, [lp.Detection(n.centroid_mm, n.volume_mm3) for n in change.new_lesions])
    assert score.sensitivity >= 0.95, [t.volume_mm3 for t in score.missed]
    assert len(score.false_positives) <= 0.1, score.false_positives  # per case, one case: none
    assert change.new_activity and change.count == len(change.new_lesions)
    assert all(h.centroid_error_mm < 2.0 for h in score.hits)
    # Lesions with a core at full contrast are measured to within 25 %; smaller ones err large rather than small.
    big = [h for h in score.hits if h.truth.kind == "new" and h.truth.volume_mm3 >= 150.0]
    assert big and all(abs(h.volume_error_pct) < 25.0 for h in big)
    assert all(h.volume_error_pct > -25.0 for h in score.hits if h.truth.kind == "new")
    assert all(n.location for n in change.new_lesions)
    # The lesion that grew is called enlarging and measured by the tissue it gained (100 mm³ here), not by its
    # whole volume at follow-up (160 mm³); every new lesion is called new.
    kinds = {n.centroid_mm: n.kind for n in change.new_lesions}
    grown = [h for h in score.hits if h.truth.kind == "enlarging"]
    assert grown and all(kinds[h.detection.centroid_mm] == "enlarging" for h in grown)
    assert all(abs(h.volume_error_pct) < 40.0 for h in grown), [h.detection.volume_mm3 for h in grown]
    assert all(kinds[h.detection.centroid_mm] == "new" for h in score.hits if h.truth.kind == "new")
    # The label map lies on the follow-up's own grid and marks each found new lesion's centre as new; an enlarging
    # lesion's centre is its old core, so only the tissue it gained, within its follow-up radius, is marked.
    assert change.labels.geometry.is_close(pair.followup.geometry)
    inverse = np.linalg.inv(pair.followup.geometry.index_to_patient())
    for hit in score.hits:
        i, j, k, _ = inverse @ np.array([*hit.truth.centroid_mm, 1.0])
        reach = 1 if hit.truth.kind == "new" else round(lp._radius_mm(hit.truth.volume_mm3)) + 1
        window = change.labels.array[round(k) - reach:round(k) + reach + 1, round(j) - reach:round(j) + reach + 1,
                                     round(i) - reach:round(i) + reach + 1]
        assert (window == ChangeLabel.NEW_LESION).any(), hit.truth
    assert set(clock.timings) == set(MS_STAGES)
    # A clean 1 mm pair shows changes far fainter than the faintest lesion: no sensitivity warning.
    assert 0.0 < change.detectable_change < MIN_LESION_DIFFERENCE and not change.sensitivity_limited
    assert not change.warnings


def test_a_pair_too_noisy_for_faint_lesions_warns_the_reader_and_keeps_what_it_finds(
        settings: NeuroflowSettings, backend: OnnxRuntimeBackend) -> None:
    # Issue 18: the reader must learn when "no new lesion" means "none this pair could show". Noise at 0.8 of the
    # brain's intensity spread on the follow-up raises the faintest detectable change above the faintest lesion's.
    brain = next(b for b in lp.real_brains() if b.name == "tcga-du-7294")
    pair = lp.make_ms_pair(brain, seed=5)
    image = pair.followup.array
    noise = np.random.default_rng(0).normal(0.0, 0.8 * float(np.std(image[image > 0])), image.shape)
    noisy = pair.followup.with_array((image + noise).astype(np.float32))
    change = detect_new_ms_lesions({SeriesRole.FLAIR: pair.baseline}, {SeriesRole.FLAIR: noisy}, backend,
                                   settings.models, study_key="bench-noisy")
    assert change.detectable_change > MIN_LESION_DIFFERENCE and change.sensitivity_limited
    assert insensitive_pair_warning(change.detectable_change) in change.warnings
    assert f"{change.detectable_change:.2f}" in insensitive_pair_warning(change.detectable_change)
    score = lp.score_lesions(pair.truth, [lp.Detection(n.centroid_mm, n.volume_mm3) for n in change.new_lesions])
    assert score.hits and not score.false_positives  # the clear lesions are still reported, and nothing false


def test_2d_flair_with_slices_of_5_mm_or_more_is_refused_with_the_reason(
        settings: NeuroflowSettings, backend: OnnxRuntimeBackend) -> None:
    slab = load_volume(DATA / "lesion-pyradiomics-brain1" / "image.nrrd")  # 0.78 x 0.78 x 6.5 mm
    with pytest.raises(StudyError, match=r"2D with 6\.5 mm slices.*thinner than 5 mm") as raised:
        detect_new_ms_lesions({SeriesRole.FLAIR: slab}, {SeriesRole.FLAIR: slab}, backend, settings.models,
                              study_key="thick-key")
    assert raised.value.study_key == "thick-key"


def test_a_timepoint_without_flair_is_refused(settings: NeuroflowSettings, backend: OnnxRuntimeBackend) -> None:
    t1 = load_volume(DATA / "glioma-tcga-du-7294" / "t1_bet.nii.gz")
    with pytest.raises(MissingSequence, match="baseline study has no FLAIR"):
        detect_new_ms_lesions({SeriesRole.T1: t1}, {SeriesRole.FLAIR: t1}, backend, settings.models,
                              study_key="k")


def _subtraction_network(repository: Path) -> ModelRef:
    """A one-layer "network": logit = 10 * (follow-up - baseline - 3) on z-scored channels, i.e. new
    tissue brighter by more than 3 robust spreads."""
    weights = helper.make_tensor("w", TensorProto.FLOAT, [1, 2, 1, 1, 1], [-10.0, 10.0])
    bias = helper.make_tensor("b", TensorProto.FLOAT, [1], [-30.0])
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["logits"])], "subtraction",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, None, None, None])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1, None, None, None])],
        initializer=[weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder = repository / "ms_subtraction" / "1"
    folder.mkdir(parents=True)
    onnx.save(model, str(folder / "model.onnx"))
    card = {"versions": [{
        "version": 1, "task": "new MS lesions (test)", "input_roles": ["FLAIR", "FLAIR"],
        "normalisation": BRAIN_ROBUST_ZSCORE, "patch_size": [],
        "inputs": [{"name": "image", "shape": [-1, 2, -1, -1, -1]}],
        "outputs": [{"name": "logits", "shape": [-1, 1, -1, -1, -1]}],
        "labels": [MS_LESION_LABEL], "output_activation": "sigmoid"}]}
    (repository / "ms_subtraction" / "model_card.yaml").write_text(yaml.safe_dump(card))
    return ModelRef(name="ms_subtraction", version=1)


def test_lesion_network_hook_runs_a_model_from_the_repository_and_keeps_its_voxels_in_the_brain(
        tmp_path: Path) -> None:
    model = _subtraction_network(tmp_path)
    backend = OnnxRuntimeBackend(tmp_path)
    rng = np.random.default_rng(0)
    baseline = (100.0 + rng.normal(0.0, 5.0, (24, 32, 32))).astype(np.float32)
    followup = baseline + rng.normal(0.0, 1.0, baseline.shape).astype(np.float32)
    followup[10:14, 10:14, 10:14] += 60.0  # new tissue
    followup[2:5, 2:5, 2:5] += 60.0  # also new, but outside the brain mask below
    brain = np.zeros(baseline.shape, dtype=bool)
    brain[6:20, 6:28, 6:28] = True
    found = network_candidates(backend, model, baseline, followup, brain)
    expected = np.zeros(baseline.shape, dtype=bool)
    expected[10:14, 10:14, 10:14] = True
    assert (found == expected).all()


def test_network_candidates_add_only_what_the_subtraction_did_not_cover_and_pass_the_size_floor() -> None:
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0), (40, 40, 40))
    box = (slice(5, 10), slice(5, 10), slice(5, 10))
    subtraction = _Candidate(box, np.ones((5, 5, 5), dtype=bool), (7.0, 7.0, 7.0), 125.0, "new", "")
    network = np.zeros((40, 40, 40), dtype=bool)
    network[6:11, 6:11, 6:11] = True  # overlaps the subtraction's lesion: the same lesion, not added again
    network[20:24, 20:24, 30:34] = True  # 64 mm³ the subtraction missed: added, kept
    network[30:32, 30:32, 5:7] = True  # 8 mm³: added, rejected for its size
    merged = _merge_network([subtraction], network, geometry)
    assert merged[0] is subtraction and len(merged) == 3
    added = {round(c.volume_mm3): c for c in merged[1:]}
    assert set(added) == {64, 8}
    assert added[64].reason == "" and added[64].kind == "new"
    assert added[64].centroid_mm == (31.5, 21.5, 21.5)  # x from the i index, z from k
    assert added[8].reason.startswith("smaller than 12")
