"""Which series a pipeline gets (issue 14): a role under the confidence floor is never used, the best of
several candidates wins by a documented order, two different protocols too close to call are refused
(AmbiguousRole) naming them, and a reason says what the header held even when nothing in it matched.

Headers come from test_classify's builder, and from files our DICOM writer makes (tests/extra_series)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from neuroflow.core.config import ClassifySettings, NeuroflowSettings
from neuroflow.core.dicom_io import FolderDicomSource
from neuroflow.core.errors import AmbiguousRole, MissingSequence
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.core.worker import failure_reason
from neuroflow.devtools.scanner_presets import PRESETS, Vendor
from neuroflow.ingest.classify import (
    SeriesClassification,
    classify_series,
    classify_study,
    effective_policy,
    format_table,
    select_inputs,
)
from neuroflow.ingest.routing import route_study
from neuroflow.ingest.site_rules import SiteRules, SiteRulesError, load_site_rules
from neuroflow.proto.neuroflow.v1 import common_pb2
from neuroflow.runtime.distributed import series_selector
from tests.extra_series import DTI_PHASE, add_series, dti_phase_preset, preset, write_small_study
from tests.unit.test_classify import CASES, FAST_GRE, FLAIR_2D, MPRAGE, T2_TSE, _preset_header, mr

R = SeriesRole
DEFAULT = ClassifySettings()
# The 0.24 T2 of the issue: a spin-echo diffusion readout gives T2 and DWI evidence of equal weight (2 each),
# and the names say nothing.
UNNAMED_DIFFUSION_READOUT: dict[str, Any] = {"seq": ("SE",), "acq": "2D", "tr": 3200, "te": 89, "b": 1000}


# --- the floor ---------------------------------------------------------------------------------------


def _known_wrong() -> dict[str, SeriesClassification]:
    """Verdicts that name a pipeline role for a series that is none: what the floor is for."""
    return {
        "phase map read out as T2 and DWI alike": classify_series(
            mr("S2MB2", protocol="ep2d_S2MB2", **UNNAMED_DIFFUSION_READOUT), 60),
        "Philips SWI minimum-intensity projection": classify_series(
            _preset_header(Vendor.PHILIPS, PRESETS[Vendor.PHILIPS][R.SWI], "SWIp_mIP"), 60),
        "nameless localizer": classify_series(mr(None, **FAST_GRE), 3),
    }


@pytest.mark.filterwarnings("ignore:Failed to decode byte string:UserWarning")  # a damaged header, on purpose
def test_default_floor_separates_clear_cases_from_known_wrong_ones() -> None:
    """The reasoning of ClassifySettings.confidence_floor, kept true: every clear case of the classification
    table that names a role is above the floor, every known-wrong verdict below it."""
    clear = [(c.name, classify_series(c.build(), c.instances)) for c in CASES if c.role != R.OTHER]
    weakest_clear = min(result.confidence for _, result in clear)
    wrong = _known_wrong()
    assert all(result.role != R.OTHER for result in wrong.values())
    strongest_wrong = max(result.confidence for result in wrong.values())
    assert strongest_wrong < DEFAULT.confidence_floor <= weakest_clear, (strongest_wrong, weakest_clear)
    assert not any(result.below_floor for _, result in clear)
    assert all(result.below_floor for result in wrong.values())


def test_a_role_below_the_floor_stays_visible_with_its_score_and_is_never_used() -> None:
    phase = mr("S2MB2", protocol="ep2d_S2MB2", number=9, **UNNAMED_DIFFUSION_READOUT)
    study = classify_study([(mr("t1_mprage", number=2, **MPRAGE), 176), (phase, 60)])
    below = next(c for c in study if c.series_number == 9)
    assert below.role == R.T2 and below.confidence == 0.24 and below.below_floor
    assert below.main_reason == ("below floor: T2 at confidence 0.24 (score 2.0) is under the confidence floor "
                                 "0.45: not used as the T2 input")
    assert "[below floor]" in format_table(study)
    with pytest.raises(MissingSequence) as raised:
        select_inputs(study, [R.T1, R.T2], study_key="k")
    assert "series 9 'S2MB2' = T2 (0.24, below floor)" in raised.value.reason


def test_the_floor_comes_from_the_settings_and_the_site_rules_override_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t2 = mr("AX T2 TSE", **T2_TSE)  # 0.78
    monkeypatch.setenv("NEUROFLOW_CLASSIFY__CONFIDENCE_FLOOR", "0.8")
    monkeypatch.setenv("NEUROFLOW_CLASSIFY__AMBIGUITY_MARGIN", "0.05")
    settings = NeuroflowSettings().classify
    assert settings == ClassifySettings(confidence_floor=0.8, ambiguity_margin=0.05)
    assert classify_series(t2, 30, policy=settings).below_floor
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("site: north\nconfidence_floor: 0.2\n", encoding="utf-8")
    rules = load_site_rules(rules_file)
    assert effective_policy(settings, rules) == ClassifySettings(confidence_floor=0.2, ambiguity_margin=0.05)
    assert not classify_series(t2, 30, rules=rules, policy=settings).below_floor
    phase = mr("S2MB2", **UNNAMED_DIFFUSION_READOUT)
    assert not classify_series(phase, 60, rules=rules, policy=settings).below_floor  # 0.24 > this site's 0.2
    rules_file.write_text("confidence_floor: 1.5\n", encoding="utf-8")
    with pytest.raises(SiteRulesError, match="confidence_floor"):
        load_site_rules(rules_file)


def test_a_site_rule_verdict_is_never_below_the_floor() -> None:
    rules = SiteRules.model_validate({"overrides": [{"name": "s2", "series_description": "^S2MB2$", "role": "T2"}],
                                      "confidence_floor": 0.99})
    result = classify_series(mr("S2MB2", **UNNAMED_DIFFUSION_READOUT), 60, rules=rules)
    assert result.role == R.T2 and not result.below_floor


# --- what the header held ------------------------------------------------------------------------------


def test_a_reason_names_the_description_protocol_and_parameters_that_matched_nothing() -> None:
    result = classify_series(mr("S2MB2", protocol="x_res_07", seq=("SE", "EP"), acq="2D", tr=3200, te=89), 60)
    assert result.role == R.OTHER
    assert result.main_reason == (
        "no evidence for any role (SeriesDescription 'S2MB2' and ProtocolName 'x_res_07' match no known sequence "
        "pattern; ScanningSequence SE\\EP, TR 3200 ms, TE 89 ms: fits no role's weighting)")
    bare = classify_series(mr(None, image_type=None), 1)
    assert bare.main_reason == ("no evidence for any role (no SeriesDescription or ProtocolName; no TR, TE or TI "
                                "to judge the weighting by)")
    named_by_parameters = classify_series(mr("S2MB2", **T2_TSE), 30)
    assert named_by_parameters.role == R.T2
    assert "SeriesDescription 'S2MB2' matches no known sequence pattern" in named_by_parameters.reasons


@pytest.mark.parametrize(
    ("header", "marker"),
    [
        (mr("t2_tse", image_type=("ORIGINAL", "PRIMARY", "P", "ND"), **T2_TSE), "marks a phase image"),
        (mr("t2_tse", image_type=("ORIGINAL", "PRIMARY", "PHASE"), **T2_TSE), "marks a phase image"),
        (mr("AX FLAIR", image_type=("DERIVED", "PRIMARY", "T2 MAP"), **FLAIR_2D), "names a derived map (T2 MAP)"),
        (mr("t1_mprage", image_type=("DERIVED", "PRIMARY", "FUSED"), **MPRAGE), "names a derived map (FUSED)"),
        (mr("AX T2", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), **T2_TSE), "marks a localizer"),
    ],
    ids=["P", "PHASE", "derived T2 map", "derived fused", "localizer"],
)
def test_phase_derived_and_localizer_image_types_are_never_inputs(header: Dataset, marker: str) -> None:
    result = classify_series(header, 30)
    assert result.role == R.OTHER and marker in result.main_reason


def test_enhanced_phase_component_and_colour_images_are_never_inputs() -> None:
    phase = mr("t2_tse", image_type=("ORIGINAL", "PRIMARY", "M_SE", "M", "SE"), **T2_TSE)
    phase.ComplexImageComponent = "PHASE"
    colour = mr("t1_mprage", **MPRAGE)
    colour.PhotometricInterpretation = "RGB"
    assert classify_series(phase, 30).main_reason.startswith("ComplexImageComponent PHASE: not a magnitude image")
    assert classify_series(colour, 176).main_reason.startswith("PhotometricInterpretation RGB: a colour image")


def test_the_dti_phase_map_written_by_our_writer_is_not_the_t2_and_its_reason_names_it(tmp_path: Path) -> None:
    seed = "dti-phase-unit"
    write_small_study(tmp_path, (R.T1, R.T1CE, R.FLAIR), seed=seed)
    add_series(tmp_path, dti_phase_preset(), seed=seed, series_number=9, minutes_after_start=30)
    # The same readout where the phase marker is missing (as some exports write it): the name still tells.
    add_series(tmp_path, dti_phase_preset(image_type=("ORIGINAL", "PRIMARY", "OTHER")), seed=seed, series_number=10,
               minutes_after_start=34)
    (study,) = FolderDicomSource(tmp_path).index()[0].values()
    classified = {c.series_number: c for c in classify_study(list(study.series.values()))}
    for number in (9, 10):
        assert classified[number].role == R.OTHER, classified[number].reasons
        assert f"SeriesDescription '{DTI_PHASE}' matches other pattern 'phase image'" in classified[number].reasons
    assert classified[9].main_reason == ("ImageType 'ORIGINAL\\PRIMARY\\P\\ND' marks a phase image: "
                                         "never a pipeline input")
    with pytest.raises(MissingSequence) as raised:
        select_inputs(classified.values(), GLIOMA_INPUT_ROLES, study_key="k")
    assert raised.value.reason.startswith("no T2 series found")
    assert f"series 9 '{DTI_PHASE}' = other" in raised.value.reason


# --- the best candidate ----------------------------------------------------------------------------------


def test_two_different_flair_protocols_too_close_to_call_are_refused_naming_both() -> None:
    study = classify_study([
        (mr("t2_tirm_tra_dark-fluid", number=4, time="101000", **FLAIR_2D), 30),
        (mr("AX FLAIR fs", number=7, time="102000", seq=("SE", "IR"), acq="2D", tr=11000, te=125, ti=2800), 30),
    ])
    with pytest.raises(AmbiguousRole) as raised:
        select_inputs(study, [R.FLAIR], study_key="abc")
    error = raised.value
    assert error.study_key == "abc"
    assert error.reason.startswith(
        "ambiguous FLAIR input, not guessed: FLAIR: series 4 't2_tirm_tra_dark-fluid' (0.86, 2D) and series 7 "
        "'AX FLAIR fs' (0.86, 2D) are different protocols within 0.10 confidence of each other")
    assert "site rule" in error.reason
    # A margin of 0 calls them apart only when their confidences differ; here they are equal.
    with pytest.raises(AmbiguousRole):
        select_inputs(study, [R.FLAIR], policy=ClassifySettings(ambiguity_margin=0.0))


def test_a_repeat_of_one_protocol_is_decided_by_the_latest_series_not_ambiguous() -> None:
    study = classify_study([
        (mr("AX FLAIR", number=4, time="101000", **FLAIR_2D), 30),
        (mr("AX FLAIR", number=8, time="103000", **FLAIR_2D), 30),
        (mr("COR FLAIR", number=5, time="101500", **FLAIR_2D), 30),  # the same sequence in another plane
    ])
    assert select_inputs(study, [R.FLAIR])[R.FLAIR].series_number == 8


def test_best_of_three_t1ce_follows_the_documented_order() -> None:
    post_2d = (mr("AX T1 FLAIR POST", number=5, time="103000", seq=("SE", "IR"), acq="2D", tr=2200, te=10, ti=800,
                  agent="Gadavist"), 24)  # 0.81: within the margin of the 3D ones
    first = (mr("t1_mprage_sag_Gd", number=9, time="103500", agent="Gadavist", **MPRAGE), 176)
    repeat = (mr("t1_mprage_sag_Gd", number=12, time="104500", agent="Gadavist", **MPRAGE), 176)
    stopped = (mr("t1_mprage_sag_Gd", number=12, time="104500", agent="Gadavist", **MPRAGE), 90)
    # 3D over 2D among the close ones; of the repeats, the latest.
    assert select_inputs(classify_study([post_2d, first, repeat]), [R.T1CE])[R.T1CE].series_number == 12
    # More slices before the latest: a repeat stopped early loses to the complete first run.
    assert select_inputs(classify_study([post_2d, first, stopped]), [R.T1CE])[R.T1CE].series_number == 9
    # Confidence first: with a margin of 0.05 the 2D T1CE is no longer close to the 3D ones (0.90 vs 0.81).
    only_2d = classify_study([post_2d, (mr("t1 fl2d Gd", number=6, seq=("GR",), acq="2D", tr=250, te=2.5,
                                           flip=70, agent="Gadavist"), 24)])
    chosen = select_inputs(only_2d, [R.T1CE], policy=ClassifySettings(ambiguity_margin=0.05))[R.T1CE]
    assert chosen.series_number == 5
    # Finer resolution before slice count among repeats.
    coarse = mr("t1_mprage_sag_Gd", number=9, time="103500", agent="Gadavist", **MPRAGE)
    fine = mr("t1_mprage_sag_Gd", number=10, time="103000", agent="Gadavist", **MPRAGE)
    coarse.PixelSpacing, fine.PixelSpacing = [1.0, 1.0], [0.8, 0.8]
    coarse.SliceThickness = fine.SliceThickness = 1.0
    assert select_inputs(classify_study([(coarse, 200), (fine, 176)]), [R.T1CE])[R.T1CE].series_number == 10


def _glioma_with_two_flairs() -> list[tuple[Dataset, int]]:
    return [
        (mr("t1_mprage", number=2, **MPRAGE), 176),
        (mr("t1_mprage_Gd", number=3, agent="Gd", **MPRAGE), 176),
        (mr("t2_tse_tra", number=4, **T2_TSE), 30),
        (mr("t2_tirm_tra_dark-fluid", number=5, **FLAIR_2D), 30),
        (mr("AX FLAIR fs", number=6, seq=("SE", "IR"), acq="2D", tr=11000, te=125, ti=2800), 30),
    ]


def test_routing_reports_an_ambiguous_role_per_pipeline_and_a_site_rule_settles_it() -> None:
    outcome = route_study(classify_study(_glioma_with_two_flairs()), ["glioma"], study_key="k")
    assert outcome.routes == [] and outcome.refusals == {}
    assert "series 5 't2_tirm_tra_dark-fluid'" in outcome.ambiguous["glioma"]
    assert "series 6 'AX FLAIR fs'" in outcome.ambiguous["glioma"]
    rules = SiteRules.model_validate({"ignore": [{"name": "fs-flair", "series_description": "flair fs"}]})
    settled = route_study(classify_study(_glioma_with_two_flairs(), rules=rules), ["glioma"], study_key="k",
                          rules=rules)
    assert settled.ambiguous == {}
    assert [r.inputs[R.FLAIR].series_number for r in settled.routes] == [5]


def test_an_ambiguous_role_in_a_stage_is_a_failure_that_retrying_cannot_help() -> None:
    reason = failure_reason(AmbiguousRole("k", "ambiguous FLAIR input"), study_key="k", stage="longitudinal")
    assert reason.code == common_pb2.FailureReason.AMBIGUOUS_ROLE
    assert not reason.retryable
    assert "ambiguous FLAIR input" in reason.message


def test_the_longitudinal_stage_chooses_a_prior_s_series_by_the_same_rules(tmp_path: Path) -> None:
    """runtime.distributed.series_selector: the latest of a repeat; two different protocols raise AmbiguousRole
    (the stage then fails with AMBIGUOUS_ROLE, above) rather than comparing with a guess."""
    seed = "selector-flair"
    write_small_study(tmp_path, (R.T1, R.FLAIR), seed=seed)
    repeat = add_series(tmp_path, preset(R.FLAIR), seed=seed, series_number=12, minutes_after_start=20)
    select = series_selector(NeuroflowSettings())
    (study,) = FolderDicomSource(tmp_path).index()[0].values()
    chosen = select(study, (R.FLAIR,))
    assert chosen is not None and chosen[R.FLAIR].series_instance_uid == repeat
    assert select(study, (R.T2,)) is None
    add_series(tmp_path, preset(R.FLAIR, series_description="t2_flair_fs_tra", repetition_time_ms=11000.0,
                                echo_time_ms=125.0, inversion_time_ms=2800.0),
               seed=seed, series_number=14, minutes_after_start=30)
    (study,) = FolderDicomSource(tmp_path).index()[0].values()
    with pytest.raises(AmbiguousRole, match="series 14 't2_flair_fs_tra'"):
        select(study, (R.FLAIR,))
