"""The segmentation's failure flag on constructed volumes: a result that agrees with its mirror members and
with the FLAIR hyperintensity raises no alarm; each kind of disagreement raises its alarm. Also the handoff to
the results stage (unknown fields tolerated), the report's summary, the metrics and the mirrored inference."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
from prometheus_client import REGISTRY

from neuroflow.core.handoff import REVIEW_META_KEY, ReviewSummary
from neuroflow.core.inference import Array, InferenceBackend
from neuroflow.core.model_card import ModelCard, ModelRef
from neuroflow.core.volume import Geometry, Volume
from neuroflow.results.glioma_results import review_assessment
from neuroflow.results.report import ReportStatus, StudyReport, TumourVolumes, render_summary
from neuroflow.segmentation.glioma import predict_stack
from neuroflow.segmentation.mirrors import flip_array_axis
from neuroflow.segmentation.postprocess import RegionMasks
from neuroflow.segmentation.review import assess, record_review

SHAPE = (48, 56, 52)  # (z, y, x), 1 mm


def _ball(centre: tuple[float, float, float], radius: float, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return bool_((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2)


def bool_(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=bool)


BRAIN = np.zeros(SHAPE, dtype=bool)
BRAIN[2:-2, 2:-2, 2:-2] = True
BRAIN &= _ball((24, 28, 26), 24)
TUMOUR = _ball((24, 28, 30), 8)  # about 2.1 mL, well inside the brain


def _flair(blob: np.ndarray, seed: int = 0) -> np.ndarray:
    """A FLAIR: noisy brain around 1.0, ``blob`` at 3.0 (far above the brain's spread)."""
    rng = np.random.default_rng(seed)
    image = (1.0 + 0.1 * rng.standard_normal(SHAPE)) * BRAIN
    image[blob] = 3.0
    return image.astype(np.float32)


def _regions(wt: np.ndarray) -> RegionMasks:
    """WT with a core of half its radius around its centre and an enhancing rim on that core."""
    centre = tuple(float(np.mean(axis)) for axis in np.nonzero(wt))
    radius = (wt.sum() * 3 / (4 * np.pi)) ** (1 / 3)
    tc = wt & _ball(centre, radius / 2)  # type: ignore[arg-type]
    return RegionMasks(wt, tc, tc & ~_ball(centre, radius / 4))  # type: ignore[arg-type]


def test_a_clean_tumour_agreeing_with_its_mirror_and_the_flair_blob_raises_no_alarm() -> None:
    result = _regions(TUMOUR)
    found = assess(result, result, {"left_right": result}, _flair(TUMOUR), BRAIN, 1.0)
    assert found.alarms == []
    assert found.figures["WT_left_right_dice"] == 1.0
    assert found.figures["WT_hyper_dice"] > 0.9
    assert 0.8 < found.figures["WT_hyper_volume_ratio"] < 1.25


def test_a_tumour_much_smaller_than_the_flair_hyperintensity_it_lies_in_raises_an_alarm() -> None:
    small = _ball((24, 28, 30), 4)  # the model found a quarter of the lesion's radius
    found = assess(_regions(small), _regions(small), {}, _flair(_ball((24, 28, 30), 11)), BRAIN, 1.0)
    assert len(found.alarms) == 1
    assert found.alarms[0].startswith("WT disagrees with the FLAIR hyperintensity")
    assert found.figures["WT_hyper_dice"] < 0.5


def test_a_tumour_where_the_flair_shows_nothing_raises_an_alarm() -> None:
    elsewhere = _ball((24, 20, 14), 6)
    found = assess(_regions(TUMOUR), _regions(TUMOUR), {}, _flair(elsewhere), BRAIN, 1.0)
    assert any("disagrees with the FLAIR" in a for a in found.alarms)
    assert found.figures["WT_hyper_dice"] == 0.0


def test_a_prediction_its_mirror_member_does_not_repeat_raises_an_alarm_for_that_region() -> None:
    mirrored = _regions(_ball((24, 28, 22), 8))  # 8 mm away: Dice well under 0.8
    found = assess(_regions(TUMOUR), _regions(TUMOUR), {"left_right": mirrored}, _flair(TUMOUR), BRAIN, 1.0)
    # TC (0.3 mL) and ET are under 1 mL: their Dice is recorded but too noisy to alarm on.
    assert [a.split(" ")[0] for a in found.alarms] == ["WT"]
    assert found.figures["TC_left_right_dice"] < 0.8
    assert "left-right mirror" in found.alarms[0]
    assert found.figures["WT_left_right_dice"] < 0.8


def test_nothing_found_beside_a_large_flair_hyperintensity_raises_an_alarm() -> None:
    empty = RegionMasks(*(np.zeros(SHAPE, dtype=bool),) * 3)
    found = assess(empty, empty, {"left_right": empty}, _flair(_ball((24, 28, 30), 14)), BRAIN, 1.0)
    assert len(found.alarms) == 1 and found.alarms[0].startswith("no tumour found, but the FLAIR")
    # ... and a small one (a vessel, a cyst) does not.
    assert assess(empty, empty, {}, _flair(_ball((24, 28, 30), 4)), BRAIN, 1.0).alarms == []


def test_regions_not_nested_before_post_processing_raise_an_alarm() -> None:
    raw = RegionMasks(TUMOUR, _ball((24, 28, 14), 7), np.zeros(SHAPE, dtype=bool))  # TC beside WT
    found = assess(_regions(TUMOUR), raw, {}, None, BRAIN, 1.0)
    assert found.alarms == ["regions not nested: 100% of the predicted TC lies outside the predicted WT "
                            "(before post-processing)"]


def test_a_tumour_lying_on_the_brain_edge_and_an_implausible_volume_raise_alarms() -> None:
    shell = BRAIN & ~_ball((24, 28, 26), 21)
    assert any("on the brain mask's edge" in a for a in assess(_regions(shell), _regions(shell), {}, None,
                                                                BRAIN, 1.0).alarms)
    huge = BRAIN & _ball((24, 28, 26), 18)
    assert any(a.startswith("implausible whole-tumour volume") for a in assess(_regions(huge), _regions(huge), {},
                                                                                None, BRAIN, 1.0).alarms)


def test_left_right_is_the_array_axis_along_patient_x_whatever_the_plane() -> None:
    axial = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                     size=(4, 4, 4))
    # Sagittal: columns (i, j, k) point along y, -z, x; patient x is the slice axis k = array axis 0.
    sagittal = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(0, 0, 1, 1, 0, 0, 0, -1, 0),
                        size=(4, 4, 4))
    assert flip_array_axis(axial, "left_right") == 2
    assert flip_array_axis(axial, "superior_inferior") == 0
    assert flip_array_axis(sagittal, "left_right") == 0


class _XRampBackend(InferenceBackend):
    """A 'network' whose output is its first channel: a mirrored member, mirrored back, must equal the plain
    prediction exactly (tests our flipping, not a model)."""

    def ready(self, model: ModelRef) -> bool:
        return True

    def card(self, model: ModelRef) -> ModelCard:
        return ModelCard.model_validate({
            "name": model.name, "version": model.version, "task": "t", "input_roles": ["T1"],
            "spacing_mm": [1, 1, 1], "patch_size": [16, 16, 16],
            "inputs": [{"name": "image", "shape": [-1, 1, 16, 16, 16], "dtype": "float32"}],
            "outputs": [{"name": "logits", "shape": [-1, 3, 16, 16, 16], "dtype": "float32"}],
            "labels": ["WT", "TC", "ET"], "output_activation": "none", "training_data": "", "license": "",
            "intended_use": "", "normalisation": "zscore_in_brain"})

    def infer(self, model: ModelRef, inputs: Mapping[str, Array]) -> dict[str, Array]:
        return {"logits": np.repeat(inputs["image"][:, :1], 3, axis=1).astype(np.float32)}


def test_a_mirrored_member_comes_back_on_the_grid_of_the_plain_prediction() -> None:
    stack = np.broadcast_to(np.arange(24, dtype=np.float32)[None, None, None, :], (1, 20, 22, 24)).copy()
    brain = np.ones((20, 22, 24), dtype=bool)
    plain = predict_stack(stack, brain, _XRampBackend(), ModelRef(name="ramp", version=1), overlap=0.5,
                          batch_size=2)
    mirrored = predict_stack(stack, brain, _XRampBackend(), ModelRef(name="ramp", version=1), overlap=0.5,
                             batch_size=2, flip_axes=(2,))
    np.testing.assert_allclose(mirrored, plain, atol=1e-5)
    assert plain[0, 0, 0, 23] > plain[0, 0, 0, 0]  # not trivially symmetric


def test_review_travels_in_the_label_map_meta_and_tolerates_fields_it_does_not_know() -> None:
    labels = Volume(np.zeros((2, 2, 2), np.uint8), Geometry((1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1),
                                                             (2, 2, 2)))
    assert ReviewSummary.of(labels) is None  # from a segmentation that predates the flag: not assessed
    review = ReviewSummary(alarms=["a", "b"], disagreement={"WT_left_right_dice": 0.5}, method="m", threshold=1)
    assert ReviewSummary.of(review.attach(labels)) == review
    newer = labels.with_array(labels.array)
    newer.meta[REVIEW_META_KEY] = ('{"alarms": ["a"], "threshold": 0, "confidence_interval": [0.1, 0.9], '
                                   '"members": {"x": 1}}')
    read = ReviewSummary.of(newer)
    assert read is not None and read.alarms == ["a"] and read.needs_review


def _report(review: ReviewSummary) -> StudyReport:
    return StudyReport(study_instance_uid="1.2.3", study_key="k", pipeline="glioma", status=ReportStatus.SUCCEEDED,
                       volumes_ml=TumourVolumes(WT=6.3, TC=2.0, ET=1.0), review=review_assessment(review))


def test_summary_says_needs_review_with_every_alarm_and_the_report_keeps_the_figures() -> None:
    alarms = ["WT unstable under a left-right mirror: Dice 0.41", "WT volume 6.3 mL is 0.21 times the FLAIR"]
    report = _report(ReviewSummary(alarms=alarms, disagreement={"WT_left_right_dice": 0.41}, method="m",
                                   threshold=1))
    assert report.review is not None and report.review.needs_review and report.review.risk_score == 2
    text = render_summary(report)
    assert "Review:    NEEDS REVIEW (2 alarm(s)" in text
    assert "Quality check: NEEDS REVIEW: 2 alarm(s), more than the site's threshold of 1" in text
    assert all(f"  - {alarm}" in text for alarm in alarms)
    read = StudyReport.model_validate_json(report.model_dump_json())
    assert read.review == report.review and read.review.disagreement == {"WT_left_right_dice": 0.41}


def test_summary_of_an_unflagged_result_says_so_without_alarm_banner() -> None:
    text = render_summary(_report(ReviewSummary(alarms=["one"], threshold=1)))
    assert "NEEDS REVIEW" not in text
    assert "Quality check: no review flag (1 alarm(s), threshold 1)" in text


@pytest.mark.parametrize("alarms", [["x", "y"], []])
def test_every_assessed_result_is_counted_and_a_flag_only_when_raised(alarms: list[str]) -> None:
    model = ModelRef(name="glioma_unet", version=7)
    labels = {"site": "site-review-test", "pipeline": "glioma", "model": "glioma_unet/7"}

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    assessed, flags = value("neuroflow_segmentation_reviews_total"), value("neuroflow_segmentation_review_flags_total")
    record_review(ReviewSummary(alarms=alarms, threshold=1), site="site-review-test", pipeline="glioma", model=model)
    assert value("neuroflow_segmentation_reviews_total") == assessed + 1
    assert value("neuroflow_segmentation_review_flags_total") == flags + (1 if alarms else 0)
