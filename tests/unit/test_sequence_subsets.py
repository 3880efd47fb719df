"""Studies without every glioma input sequence: which subsets a model card accepts (the one qualification both
runtimes route with), which series becomes the reference, which sub-regions are not assessable, and how the
report and the SEG show them."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from neuroflow.core.config import GLIOMA_PIPELINE, PipelineModels
from neuroflow.core.errors import MissingSequence
from neuroflow.core.labels import BratsLabel
from neuroflow.core.model_card import ModelCard, TensorSpec
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.core.sequence_subsets import PipelineInputs, glioma_reference_role, not_assessable
from neuroflow.ingest.classify import SeriesClassification
from neuroflow.ingest.routing import pipeline_inputs, qualify, route_study
from neuroflow.orchestrator.pipelines import build_input, glioma_pipeline
from neuroflow.proto.neuroflow.v1 import common_pb2, events_pb2
from neuroflow.results.dicom_seg import build_glioma_seg
from neuroflow.results.report import ReportStatus, StudyReport, TumourVolumes, render_summary
from tests.unit.test_dicom_seg import MODEL, _label_map, _oblique_geometry, _source_series

R = SeriesRole
ALL = [r.value for r in GLIOMA_INPUT_ROLES]


def _card(min_roles_any: list[str], input_roles: list[str] | None = None) -> ModelCard:
    return ModelCard(name="glioma_unet", version=2, task="test", input_roles=input_roles or ALL,
                     min_roles_any=min_roles_any, inputs=[TensorSpec(name="image", shape=[-1, 4, 8, 8, 8])],
                     outputs=[TensorSpec(name="logits", shape=[-1, 3, 8, 8, 8])], labels=["WT", "TC", "ET"])


COMPLETE_ONLY = _card([])  # the v1 card: trained on complete studies
DROPOUT = _card(["T1CE", "FLAIR"])  # trained with sequence dropout


def _series(*roles: SeriesRole) -> list[SeriesClassification]:
    return [SeriesClassification(series_instance_uid=f"1.2.3.{n}", series_number=n, description=f"{role} series",
                                 role=role, confidence=0.95, reasons=("test",), is_3d=True)
            for n, role in enumerate(roles, start=1)]


@pytest.mark.parametrize("roles", [
    (R.FLAIR, R.T1CE), (R.FLAIR,), (R.T1CE,), (R.T1, R.FLAIR), (R.T2, R.T1CE), (R.T1, R.T1CE, R.T2, R.FLAIR),
])
def test_a_dropout_card_takes_any_subset_holding_flair_or_t1ce(roles: tuple[SeriesRole, ...]) -> None:
    chosen = qualify(_series(*roles, R.OTHER), PipelineInputs.of_card(DROPOUT), study_key="k1")
    assert set(chosen) == set(roles)


@pytest.mark.parametrize("roles", [(R.T1,), (R.T2,), (R.T1, R.T2), ()])
def test_a_study_with_neither_flair_nor_t1ce_is_refused_naming_the_study_and_what_it_lacks(
        roles: tuple[SeriesRole, ...]) -> None:
    with pytest.raises(MissingSequence) as caught:
        qualify(_series(*roles, R.OTHER), PipelineInputs.of_card(DROPOUT), study_key="k2")
    assert caught.value.study_key == "k2"
    assert "no T1CE or FLAIR series found (required: at least one of T1CE, FLAIR" in caught.value.reason
    assert "the study has:" in caught.value.reason


def test_a_card_without_min_roles_any_still_refuses_a_study_missing_any_input() -> None:
    with pytest.raises(MissingSequence) as caught:
        qualify(_series(R.FLAIR, R.T1CE), PipelineInputs.of_card(COMPLETE_ONLY), study_key="k3")
    assert "no T1 or T2 series found (required: T1, T1CE, T2, FLAIR)" in caught.value.reason
    assert set(qualify(_series(*GLIOMA_INPUT_ROLES), PipelineInputs.of_card(COMPLETE_ONLY), study_key="k3")) == set(
        GLIOMA_INPUT_ROLES)


def test_routing_follows_the_card_it_is_given_and_refuses_without_one() -> None:
    study = _series(R.FLAIR, R.T1CE)
    with_card = route_study(study, [GLIOMA_PIPELINE], study_key="k4", inputs=pipeline_inputs(DROPOUT))
    assert [(r.pipeline, set(r.inputs)) for r in with_card.routes] == [(GLIOMA_PIPELINE, {R.FLAIR, R.T1CE})]
    for inputs in (None, pipeline_inputs(COMPLETE_ONLY), pipeline_inputs(None)):
        refused = route_study(study, [GLIOMA_PIPELINE], study_key="k4", inputs=inputs)
        assert refused.routes == [] and "no T1 or T2 series found" in refused.refusals[GLIOMA_PIPELINE]


def test_a_card_whose_min_roles_any_names_a_role_it_does_not_take_is_refused() -> None:
    with pytest.raises(ValueError, match=r"glioma_unet:2.*SWI"):
        PipelineInputs.of_card(_card(["SWI"]))


@pytest.mark.parametrize(("present", "reference"), [
    ({R.T1, R.T1CE, R.T2, R.FLAIR}, R.T1CE), ({R.FLAIR, R.T1CE}, R.T1CE), ({R.FLAIR, R.T1, R.T2}, R.FLAIR),
    ({R.T2, R.T1}, R.T1), ({R.T2}, R.T2),
])
def test_the_reference_is_the_first_of_t1ce_flair_t1_t2_the_study_has(present: set[SeriesRole],
                                                                       reference: SeriesRole) -> None:
    assert glioma_reference_role(present) == reference


def test_the_orchestrator_asks_preprocessing_for_the_same_reference() -> None:
    spec = glioma_pipeline(PipelineModels())
    for roles, expected in (([R.FLAIR, R.T1CE], "T1CE"), ([R.T1, R.FLAIR], "FLAIR"), ([R.T2, R.T1], "T1")):
        ready = events_pb2.StudyReady(series=[common_pb2.SeriesRef(series_instance_uid=f"1.{n}", role=r.value)
                                              for n, r in enumerate(roles)])
        task = build_input(common_pb2.STAGE_PREPROCESS, spec, ready, {}, destination="")
        assert task.reference_role == expected == glioma_reference_role(roles)


@pytest.mark.parametrize(("present", "expected"), [
    ({R.T1, R.T1CE, R.T2, R.FLAIR}, set()),
    ({R.FLAIR, R.T1CE}, set()),
    ({R.T2, R.T1CE}, set()),
    ({R.FLAIR}, {"TC", "ET"}),
    ({R.T1, R.T2, R.FLAIR}, {"TC", "ET"}),
    ({R.T1CE}, {"WT"}),
    ({R.T1, R.T1CE}, {"WT"}),
])
def test_enhancing_tumour_and_core_need_t1ce_and_the_whole_tumour_flair_or_t2(present: set[SeriesRole],
                                                                               expected: set[str]) -> None:
    regions = not_assessable(present)
    assert set(regions) == expected
    if "ET" in regions:
        assert regions["ET"] == "enhancing tumour cannot be assessed without T1 post-contrast"
        assert "T1 post-contrast" in regions["TC"]
    if "WT" in regions:
        assert "FLAIR or T2" in regions["WT"]


def test_the_summary_prints_not_assessable_regions_without_a_figure_and_names_the_missing_sequences() -> None:
    report = StudyReport(study_instance_uid="1.2.3", study_key="k5", pipeline=GLIOMA_PIPELINE,
                         status=ReportStatus.SUCCEEDED, volumes_ml=TumourVolumes(WT=30.0, TC=4.0, ET=1.5),
                         not_assessable=not_assessable({R.FLAIR, R.T1}), sequences_missing=[R.T1CE, R.T2])
    lines = render_summary(report).splitlines()
    by_name = {line.split("  ")[1].strip(): line for line in lines if line.startswith("  ") and "(" in line}
    assert by_name["Whole tumour (WT)"].split()[-1] == "30.0"
    for name in ("Tumour core (TC)", "Enhancing tumour (ET)", "Oedema (WT - TC)", "Necrotic core (TC - ET)"):
        assert "not assessable (" in by_name[name] and "4.0" not in by_name[name] and "1.5" not in by_name[name]
    assert "Sequences missing: T1CE, T2" in lines[lines.index("Series used:") + 2]
    # report.json keeps the model's figures beside the reasons they are not measurements
    back = StudyReport.model_validate_json(report.model_dump_json())
    assert back.not_assessable.keys() == {"TC", "ET"} and back.volumes_ml == report.volumes_ml


def _segments(seg: Dataset) -> list[str]:
    return [str(s.SegmentLabel) for s in seg.SegmentSequence]


def test_without_t1ce_the_seg_holds_one_whole_tumour_segment_over_every_tumour_voxel() -> None:
    source = _source_series(_oblique_geometry())
    labels = _label_map(source.geometry)
    seg = build_glioma_seg(labels, source.instances, model=MODEL, not_assessable=not_assessable({R.FLAIR}))
    assert seg is not None
    assert _segments(seg) == ["Whole tumour (core not assessable)"]
    decoded = hd.seg.Segmentation.from_dataset(seg).get_volume(combine_segments=True)
    assert int((decoded.array > 0).sum()) == int((labels.array > 0).sum())


def test_without_flair_or_t2_the_seg_draws_core_and_enhancement_but_no_oedema() -> None:
    source = _source_series(_oblique_geometry())
    labels = _label_map(source.geometry)
    seg = build_glioma_seg(labels, source.instances, model=MODEL, not_assessable=not_assessable({R.T1CE}))
    assert seg is not None
    assert _segments(seg) == ["Necrotic and non-enhancing tumour core", "Enhancing tumour"]
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    decoded = hd.seg.Segmentation.from_dataset(seg).get_volume(combine_segments=True)
    core = np.isin(labels.array, [BratsLabel.NECROTIC_CORE, BratsLabel.ENHANCING])
    assert int((decoded.array > 0).sum()) == int(core.sum())
