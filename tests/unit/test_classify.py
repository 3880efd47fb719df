"""Routing: every series gets its role from its header, whatever the vendor calls it, with reasons;
site rules override; a study is settled as a whole; a pipeline gets one series per role or a reason.

Headers are built here as header-only pydicom Datasets, with the tags real scanners write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag

from neuroflow.core.dicom_io import SeriesInstances
from neuroflow.core.errors import MissingSequence
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole
from neuroflow.devtools.scanner_presets import EQUIPMENT, PRESETS, SequencePreset, Vendor
from neuroflow.ingest.classify import (
    SeriesClassification,
    classify_series,
    classify_study,
    format_table,
    select_inputs,
)
from neuroflow.ingest.site_rules import SiteRules, SiteRulesError, load_site_rules

REPOSITORY = Path(__file__).resolve().parents[2]
R = SeriesRole

SIEMENS = "SIEMENS"
GE = "GE MEDICAL SYSTEMS"
PHILIPS = "Philips Medical Systems"
CANON = "CANON_MEC"

_uid_counter = iter(range(1, 1_000_000))


def mr(
    description: str | None = None,
    *,
    protocol: str | None = None,
    manufacturer: str | None = None,
    modality: str | None = "MR",
    image_type: tuple[str, ...] | None = ("ORIGINAL", "PRIMARY", "M", "ND"),
    seq: tuple[str, ...] = (),
    variant: tuple[str, ...] = (),
    acq: str | None = None,
    seqname: str | None = None,
    tr: float | None = None,
    te: float | None = None,
    ti: float | None = None,
    flip: float | None = None,
    b: float | None = None,
    agent: str | None = None,
    thickness: float | None = None,
    number: int | None = None,
    time: str | None = None,
) -> Dataset:
    """A header-only Dataset holding only the tags given (None: tag absent)."""
    ds = Dataset()
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.498.{next(_uid_counter)}"
    values: dict[str, object] = {
        "Modality": modality, "SeriesDescription": description, "ProtocolName": protocol,
        "Manufacturer": manufacturer, "ImageType": list(image_type) if image_type else None,
        "ScanningSequence": list(seq) or None, "SequenceVariant": list(variant) or None,
        "MRAcquisitionType": acq, "SequenceName": seqname, "RepetitionTime": tr, "EchoTime": te,
        "InversionTime": ti, "FlipAngle": flip, "DiffusionBValue": b, "ContrastBolusAgent": agent,
        "SliceThickness": thickness, "SeriesNumber": number, "AcquisitionTime": time,
    }
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    if time is not None:
        ds.AcquisitionDate = "20240312"
    return ds


# Typical parameter sets (ms, degrees) as the scanners write them.
FLAIR_2D: dict[str, Any] = {"seq": ("SE", "IR"), "variant": ("SK", "SP", "MP"), "acq": "2D",
                             "tr": 9000, "te": 81, "ti": 2500}
MPRAGE: dict[str, Any] = {"seq": ("GR", "IR"), "variant": ("SK", "SP", "MP"), "acq": "3D",
                           "tr": 2300, "te": 2.32, "ti": 900, "flip": 8, "seqname": "*tfl3d1_16ns"}
T1_SE: dict[str, Any] = {"seq": ("SE",), "acq": "2D", "tr": 500, "te": 10, "flip": 90}
T2_TSE: dict[str, Any] = {"seq": ("SE",), "acq": "2D", "tr": 6000, "te": 99, "flip": 150}
DWI_EPI: dict[str, Any] = {"seq": ("SE", "EP"), "acq": "2D", "tr": 5000, "te": 89, "flip": 90}
T2STAR_GRE: dict[str, Any] = {"seq": ("GR",), "acq": "2D", "tr": 650, "te": 20, "flip": 20}
SWI_3D: dict[str, Any] = {"seq": ("GR",), "acq": "3D", "tr": 27, "te": 20, "flip": 15}
FAST_GRE: dict[str, Any] = {"seq": ("GR",), "acq": "2D", "tr": 8, "te": 4, "flip": 20}


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], Dataset]
    role: SeriesRole
    instances: int = 30


def _damaged_header() -> Dataset:
    """As read from a real file: raw elements, a Latin-1 description under a UTF-8 character set, a DS
    that is not a number."""
    ds = mr(None, manufacturer=SIEMENS, seq=("SE",), tr=6000)
    ds.SpecificCharacterSet = "ISO_IR 192"
    for tag, vr, value in ((0x0008103E, "LO", b"T2 TSE tra \xe4\xf6"), (0x00180081, "DS", b"abc ")):
        ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return ds


def _latin1_bytes_description() -> Dataset:
    ds = mr(None, **T2_TSE)
    ds.add_new(0x0008103E, "LO", b"Ax T2 \xe9\xe8 TSE")
    return ds


def _enhanced_flair_without_description() -> Dataset:
    """Enhanced MR (multi-frame): the timing lives in the shared functional groups."""
    ds = mr(None, manufacturer=PHILIPS, image_type=("ORIGINAL", "PRIMARY", "M_IR", "M", "IR"))
    timing, echo, modifier, mr_frame = Dataset(), Dataset(), Dataset(), Dataset()
    timing.RepetitionTime = 11000
    timing.FlipAngle = 90
    echo.EffectiveEchoTime = 125
    modifier.InversionRecovery = "YES"
    modifier.InversionTimes = [2800]
    mr_frame.MRAcquisitionType = "2D"
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = Sequence([timing])
    shared.MREchoSequence = Sequence([echo])
    shared.MRModifierSequence = Sequence([modifier])
    shared.MRImageFrameTypeSequence = Sequence([mr_frame])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.NumberOfFrames = 28
    return ds


def _multivalued_description() -> Dataset:
    ds = mr(None, **T1_SE)
    ds.SeriesDescription = "T1\\POST GD"  # a backslash makes it two values
    return ds


CASES: list[Case] = [
    # Siemens
    Case("siemens t2_tirm_tra_dark-fluid", lambda: mr("t2_tirm_tra_dark-fluid", manufacturer=SIEMENS,
                                                      seqname="*tir2d1_16", **FLAIR_2D), R.FLAIR),
    Case("siemens t1_mprage_sag_p2_iso", lambda: mr("t1_mprage_sag_p2_iso", manufacturer=SIEMENS, **MPRAGE), R.T1, 176),
    Case("siemens T1 MPRAGE +C (name only)", lambda: mr("T1 MPRAGE +C", manufacturer=SIEMENS, **MPRAGE), R.T1CE, 176),
    Case("siemens T1_MPR_TRA_KM (Kontrastmittel)", lambda: mr("T1_MPR_TRA_KM", manufacturer=SIEMENS, **MPRAGE),
         R.T1CE, 176),
    Case("siemens t2_tse_tra", lambda: mr("t2_tse_tra", manufacturer=SIEMENS, seqname="*tse2d1_15", **T2_TSE), R.T2),
    Case("siemens ep2d_diff trace", lambda: mr("ep2d_diff_3scan_trace_p2_TRACEW", manufacturer=SIEMENS,
                                               seqname="*ep_b1000t",
                                               image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"),
                                               **DWI_EPI), R.DWI),
    Case("siemens ep2d_diff ADC map", lambda: mr("ep2d_diff_3scan_trace_p2_ADC", protocol="ep2d_diff_3scan_trace_p2",
                                                 manufacturer=SIEMENS, seqname="*ep_b0_1000",
                                                 image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
                                                 **DWI_EPI), R.ADC),
    Case("siemens t2_swi_tra", lambda: mr("t2_swi_tra", manufacturer=SIEMENS, seqname="*swi3d1r", **SWI_3D), R.SWI, 72),
    Case("siemens SWI minIP (derived)", lambda: mr("t2_swi_tra_p2_mIP", manufacturer=SIEMENS, seqname="*swi3d1r",
                                                   image_type=("DERIVED", "PRIMARY", "M", "SWI", "ND"), **SWI_3D),
         R.OTHER),
    Case("siemens SWI phase", lambda: mr("t2_swi_tra_p2_Pha", manufacturer=SIEMENS, seqname="*swi3d1r",
                                         image_type=("ORIGINAL", "PRIMARY", "P", "ND"), **SWI_3D), R.OTHER),
    Case("siemens t2_fl2d_tra_hemo", lambda: mr("t2_fl2d_tra_hemo", manufacturer=SIEMENS, **T2STAR_GRE), R.SWI),
    Case("siemens localizer", lambda: mr("localizer", manufacturer=SIEMENS, **FAST_GRE), R.OTHER, 3),
    Case("siemens AAHead_Scout", lambda: mr("AAHead_Scout_32ch-head-coil", manufacturer=SIEMENS, **FAST_GRE),
         R.OTHER, 128),
    Case("siemens MPR reformat of the MPRAGE", lambda: mr("t1_mprage_sag_p2_iso_MPR_tra", manufacturer=SIEMENS,
                                                          image_type=("DERIVED", "SECONDARY", "MPR", "CSA MPR"),
                                                          **MPRAGE), R.OTHER, 40),
    Case("siemens 3D SPACE dark-fluid", lambda: mr("t2_space_dark-fluid_sag_p2_iso", manufacturer=SIEMENS,
                                                   seq=("SE", "IR"), acq="3D", tr=5000, te=387, ti=1800), R.FLAIR, 176),
    # GE
    Case("ge AX FLAIR", lambda: mr("AX FLAIR", manufacturer=GE, seqname="fse-ir", seq=("SE", "IR"), tr=9000, te=125,
                                   ti=2375), R.FLAIR),
    Case("ge T1 POST GD", lambda: mr("T1 POST GD", manufacturer=GE, **T1_SE), R.T1CE),
    Case("ge AX T1 FLAIR is T1-weighted", lambda: mr("AX T1 FLAIR", manufacturer=GE, seq=("SE", "IR"), tr=2200, te=10,
                                                     ti=800), R.T1),
    Case("ge AX T1 FLAIR POST with agent", lambda: mr("AX T1 FLAIR POST", manufacturer=GE, seq=("SE", "IR"), tr=2200,
                                                      te=10, ti=800, agent="Gadavist"), R.T1CE),
    Case("ge Ax T1 SE  pre (double space)", lambda: mr("Ax T1 SE  pre", manufacturer=GE, **T1_SE), R.T1),
    Case("ge Sag T1 BRAVO", lambda: mr("Sag T1 BRAVO", manufacturer=GE, seqname="efgre3d", seq=("GR", "IR"), acq="3D",
                                       tr=8.2, te=3.2, ti=450, flip=12), R.T1, 180),
    Case("ge SWAN 3D", lambda: mr("SWAN 3D", manufacturer=GE, seqname="swan", seq=("GR",), acq="3D", tr=40, te=24,
                                  flip=15), R.SWI, 60),
    Case("ge Ax GRE", lambda: mr("Ax GRE", manufacturer=GE, **T2STAR_GRE), R.SWI),
    Case("ge 3-Plane Loc", lambda: mr("3-Plane Loc", manufacturer=GE, **FAST_GRE), R.OTHER, 15),
    Case("ge Apparent Diffusion Coefficient", lambda: mr("Apparent Diffusion Coefficient (mm2/s)", manufacturer=GE,
                                                         image_type=("DERIVED", "PRIMARY", "ADC"), **DWI_EPI), R.ADC),
    Case("ge Ax T2 PROPELLER", lambda: mr("Ax T2 PROPELLER", manufacturer=GE, **T2_TSE), R.T2),
    Case("ge T2 POST FOSSA is not about contrast", lambda: mr("T2 POST FOSSA", manufacturer=GE, **T2_TSE), R.T2),
    # Philips
    Case("philips sT1W_3D_TFE", lambda: mr("sT1W_3D_TFE", manufacturer=PHILIPS, seqname="T1TFE", seq=("GR",),
                                           variant=("SP", "MP"), acq="3D", tr=8.1, te=3.7, flip=8), R.T1, 180),
    Case("philips T1W_3D_TFE_CE with agent", lambda: mr("T1W_3D_TFE_CE", manufacturer=PHILIPS, seq=("GR",), acq="3D",
                                                        tr=8.1, te=3.7, flip=8, agent="Dotarem"), R.T1CE, 180),
    Case("philips T2W_TSE", lambda: mr("T2W_TSE", manufacturer=PHILIPS, seq=("SE",), tr=3000, te=80), R.T2),
    Case("philips FLAIR_longTR", lambda: mr("FLAIR_longTR", manufacturer=PHILIPS, seq=("SE", "IR"), tr=11000, te=125,
                                            ti=2800), R.FLAIR),
    Case("philips DWI_b1000", lambda: mr("DWI_b1000", manufacturer=PHILIPS, b=1000, **DWI_EPI), R.DWI),
    Case("philips dADC", lambda: mr("dADC", protocol="DWI_SENSE", manufacturer=PHILIPS,
                                    image_type=("DERIVED", "PRIMARY", "ADC", "ADC"), **DWI_EPI), R.ADC),
    Case("philips eADC is not an ADC", lambda: mr("eADC", protocol="DWI_SENSE", manufacturer=PHILIPS,
                                                  image_type=("DERIVED", "PRIMARY", "EADC"), **DWI_EPI), R.OTHER),
    Case("philips SWIp", lambda: mr("SWIp", manufacturer=PHILIPS, seq=("GR",), acq="3D", tr=31, te=7.2, flip=17),
         R.SWI, 120),
    Case("philips Survey", lambda: mr("SmartSurvey", manufacturer=PHILIPS, **FAST_GRE), R.OTHER, 9),
    # Canon
    Case("canon T2_FLAIR_AX", lambda: mr("T2_FLAIR_AX", manufacturer=CANON, seq=("IR",), tr=10000, te=100, ti=2600),
         R.FLAIR),
    Case("canon T1_SE_AX_Gd", lambda: mr("T1_SE_AX_Gd", manufacturer=CANON, **T1_SE), R.T1CE),
    Case("canon FFE T2* AX", lambda: mr("FFE T2* AX", manufacturer=CANON, **T2STAR_GRE), R.SWI),
    Case("canon DWI b=1000", lambda: mr("DWI_ax b=1000", manufacturer=CANON, **DWI_EPI), R.DWI),
    # Languages, case, spacing
    Case("german T1 nach KM", lambda: mr("T1 nach KM", **T1_SE), R.T1CE),
    Case("german T1 mit Kontrastmittel", lambda: mr("T1 mit Kontrastmittel", **T1_SE), R.T1CE),
    Case("german non-ASCII nativ", lambda: mr("T1 3D nativ Schädel ü", **MPRAGE), R.T1, 176),
    Case("portuguese T1 Pós-contraste", lambda: mr("T1 Pós-contraste", **T1_SE), R.T1CE),
    Case("italian T1 SE post mdc", lambda: mr("T1 SE post mdc", **T1_SE), R.T1CE),
    Case("mixed case aX fLaIr", lambda: mr("aX fLaIr", **FLAIR_2D), R.FLAIR),
    Case("upper case AX T2 TSE", lambda: mr("AX T2 TSE", **T2_TSE), R.T2),
    Case("post-op is not post-contrast", lambda: mr("AX T1 POST-OP", **T1_SE), R.T1),
    Case("pre in the name outweighs a copied agent tag", lambda: mr("T1 SE pre", agent="Gadovist", **T1_SE), R.T1),
    Case("multi-valued description T1\\POST GD", _multivalued_description, R.T1CE),
    Case("T2 MAP is a quantitative map", lambda: mr("T2 MAP", seq=("SE",), tr=2000, te=10), R.OTHER),
    # No names: the parameters decide
    Case("empty description, FLAIR parameters", lambda: mr("", **FLAIR_2D), R.FLAIR),
    Case("no description tag, T2 parameters", lambda: mr(None, **T2_TSE), R.T2),
    Case("no description tag, MPRAGE parameters", lambda: mr(None, **{**MPRAGE, "seqname": None}), R.T1, 176),
    Case("no description tag, diffusion b-value", lambda: mr(None, b=1000, **DWI_EPI), R.DWI),
    Case("no description tag, T2* gradient echo", lambda: mr(None, **T2STAR_GRE), R.SWI),
    Case("enhanced multi-frame FLAIR, no description", _enhanced_flair_without_description, R.FLAIR, 1),
    # Missing and damaged tags
    Case("every tag missing", Dataset, R.OTHER, 1),
    Case("damaged raw tags", _damaged_header, R.T2),
    Case("Latin-1 bytes in the description", _latin1_bytes_description, R.T2),
    # CT and non-image objects
    Case("ct Head 5mm", lambda: mr("Head 5mm", modality="CT", image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
                                   thickness=5), R.CT),
    Case("ct Topogram", lambda: mr("Topogram  0.6  T20s", modality="CT",
                                   image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), R.OTHER, 1),
    Case("ct MPR coronal reformat", lambda: mr("Head MPR Cor", modality="CT",
                                               image_type=("DERIVED", "SECONDARY", "MPR")), R.OTHER),
    Case("segmentation object", lambda: mr("AI tumour segmentation", modality="SEG", image_type=None), R.OTHER, 1),
]


@pytest.mark.filterwarnings("ignore:Failed to decode byte string:UserWarning")  # the damaged header, on purpose
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_series_is_routed_to_its_role_from_the_header(case: Case) -> None:
    result = classify_series(case.build(), case.instances)
    assert result.role == case.role, "\n".join(result.reasons)
    assert 0.0 <= result.confidence <= 1.0
    assert result.reasons, "every verdict says why"


def test_table_holds_at_least_thirty_cases_across_four_vendors() -> None:
    assert len(CASES) >= 30
    for prefix in ("siemens", "ge", "philips", "canon"):
        assert sum(c.name.startswith(prefix) for c in CASES) >= 4


def test_name_evidence_is_quoted_in_the_reasons() -> None:
    result = classify_series(mr("t2_tirm_tra_dark-fluid", **FLAIR_2D), 30)
    assert result.reasons[0] == ("SeriesDescription 't2_tirm_tra_dark-fluid' matches FLAIR patterns 'tirm', "
                                 "'dark-fluid'")
    assert any("InversionTime 2500 ms with TE 81 ms: fluid-attenuated inversion recovery" in r for r in result.reasons)


def test_series_without_description_is_classified_by_parameters_named_in_the_reasons() -> None:
    result = classify_series(mr(None, **FLAIR_2D), 30)
    assert result.role == R.FLAIR
    assert result.description == ""
    assert "InversionTime 2500 ms" in result.main_reason and "TE 81 ms" in result.main_reason
    assert not any("SeriesDescription" in r for r in result.reasons)
    t2 = classify_series(mr(None, **T2_TSE), 30)
    assert t2.main_reason == "ScanningSequence SE, TR 6000 ms, TE 99 ms without long inversion: T2-weighted"


def test_inversion_prepared_t1_is_not_taken_for_flair() -> None:
    result = classify_series(mr(None, **MPRAGE), 176)
    assert result.role == R.T1
    assert any("InversionTime 900 ms" in r and "not FLAIR" in r for r in result.reasons)
    assert result.is_3d


def test_contrast_agent_tag_turns_t1_into_t1ce_and_says_so() -> None:
    result = classify_series(mr("t1_mprage_sag", agent="Gadovist", **MPRAGE), 176)
    assert result.role == R.T1CE
    assert "ContrastBolusAgent 'Gadovist' present: post-contrast" in result.reasons


def test_contrast_tag_does_not_change_a_flair() -> None:
    result = classify_series(mr("AX FLAIR", agent="Gadovist", **FLAIR_2D), 30)
    assert result.role == R.FLAIR
    assert any("only a T1 becomes a T1CE" in r for r in result.reasons)


def test_series_instances_are_read_from_the_first_instance_with_b_values_from_all() -> None:
    headers = []
    for number, b in ((1, 0), (2, 1000), (3, 0), (4, 1000)):
        ds = mr(None, b=b, **DWI_EPI)
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.InstanceNumber = number
        headers.append(ds)
    headers.reverse()  # source order is not instance order
    series = SeriesInstances("1.2.3", "1.2.3.4", headers=headers, paths=[""] * 4)
    result = classify_series(series)
    assert result.role == R.DWI
    assert result.instance_count == 4
    assert result.series_instance_uid == "1.2.3.4"
    assert any("b-value 0, 1000 s/mm²" in r for r in result.reasons)


def test_series_with_no_instances_is_other_without_raising() -> None:
    result = classify_series(SeriesInstances("1.2.3", "1.2.3.9"))
    assert result.role == R.OTHER
    assert result.series_instance_uid == "1.2.3.9"
    assert result.confidence < 0.1


def test_two_dimensional_and_three_dimensional_acquisitions_are_recorded() -> None:
    assert classify_series(mr("t1_mprage", **MPRAGE), 176).is_3d
    assert not classify_series(mr("t2_tse", **T2_TSE), 30).is_3d
    no_type = classify_series(mr("T1 3D", seq=("GR",), tr=8, te=3.5, thickness=1.0), 170)
    assert no_type.is_3d and any("170 slices of 1 mm: a 3D volume" in r for r in no_type.reasons)


# --- site rules --------------------------------------------------------------------------------------


def _rules(**raw: object) -> SiteRules:
    return SiteRules.model_validate(raw)


def test_site_rule_overrides_the_heuristics_and_says_so() -> None:
    rules = _rules(overrides=[{"name": "north-bravo-is-post", "series_description": "bravo", "role": "t1ce"}])
    header = mr("Sag T1 BRAVO", manufacturer=GE, seq=("GR", "IR"), acq="3D", tr=8.2, te=3.2, ti=450)
    assert classify_series(header, 180).role == R.T1
    result = classify_series(header, 180, rules=rules)
    assert result.role == R.T1CE
    assert result.confidence == 1.0
    assert result.by_site_rule
    assert result.main_reason.startswith("site rule 'north-bravo-is-post' assigns T1CE (SeriesDescription "
                                         "'Sag T1 BRAVO' matches 'bravo'); overrides the heuristic verdict T1")
    assert any(r.startswith("heuristic: ") for r in result.reasons)


def test_site_rule_applies_only_to_the_manufacturer_and_station_it_names() -> None:
    rules = _rules(overrides=[{"name": "philips-only", "series_description": "^T1", "manufacturer": "philips",
                               "station_name": "^PHIL-3T$", "role": "FLAIR"}])
    ge = mr("T1 SE", manufacturer=GE, **T1_SE)
    ge.StationName = "PHIL-3T"
    philips = mr("T1 SE", manufacturer=PHILIPS, **T1_SE)
    philips.StationName = "PHIL-3T"
    assert classify_series(ge, 20, rules=rules).role == R.T1
    assert classify_series(philips, 20, rules=rules).role == R.FLAIR


def test_site_ignore_rule_makes_a_series_other() -> None:
    rules = _rules(ignore=[{"name": "research-t2", "protocol_name": "^RESEARCH_"}])
    result = classify_series(mr("t2_tse_tra", protocol="RESEARCH_T2_07", **T2_TSE), 30, rules=rules)
    assert result.role == R.OTHER
    assert result.main_reason.startswith("ignored by site rule 'research-t2'")


def test_example_site_rules_file_loads_and_routes() -> None:
    rules = load_site_rules(REPOSITORY / "deploy" / "site-rules.example.yaml")
    assert rules.overrides and rules.ignore
    bravo = mr("Ax T1 BRAVO", manufacturer=GE, seq=("GR", "IR"), acq="3D", tr=8.2, te=3.2, ti=450)
    bravo.StationName = "NORTH-MR3T"
    assert classify_series(bravo, 180, rules=rules).role == R.T1CE
    dwi = mr("ep2d_diff_3scan_trace_p2", b=1000, **DWI_EPI)
    assert classify_series(dwi, 30, rules=rules).role == R.DWI  # the ignore patterns leave diffusion alone


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("overrides:\n  - name: broken\n    series_description: 't1(('\n    role: T1CE\n",
         "overrides[0] (rule 'broken')"),
        ("overrides:\n  - name: typo\n    seriesdescription: 't1'\n    role: T1CE\n", "rule 'typo'"),
        ("overrides:\n  - name: no-role-known\n    series_description: 't1'\n    role: T3\n", "rule 'no-role-known'"),
        ("ignore:\n  - name: scanner-only\n    manufacturer: 'GE'\n", "needs series_description or protocol_name"),
        ("- just a list\n", "expected a mapping"),
    ],
    ids=["bad regex", "misspelt key", "unknown role", "no name pattern", "not a mapping"],
)
def test_invalid_site_rules_are_refused_at_load_naming_the_rule(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SiteRulesError, match=str(path)) as raised:
        load_site_rules(path)
    assert message in str(raised.value)


def test_missing_site_rules_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SiteRulesError, match="does not exist"):
        load_site_rules(tmp_path / "absent.yaml")


def test_empty_site_rules_file_means_no_rules(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n", encoding="utf-8")
    assert load_site_rules(path) == SiteRules()


# --- the study ---------------------------------------------------------------------------------------


def _study(*headers: tuple[Dataset, int]) -> list[SeriesClassification]:
    return classify_study(list(headers))


def test_later_identical_t1_with_only_a_post_hint_becomes_t1ce() -> None:
    pre = mr("AX T1 SE", number=3, time="101500", **T1_SE)
    post = mr("AX T1 SE post", number=9, time="103000", **T1_SE)
    assert classify_series(post, 20).role == R.T1, "a 'post' hint alone does not decide"
    by_number = {c.series_number: c for c in _study((pre, 20), (post, 20))}
    assert by_number[3].role == R.T1
    assert by_number[9].role == R.T1CE
    assert by_number[9].main_reason.startswith("study: the only one of 2 T1 series with contrast evidence")
    assert "acquired after series 3 'AX T1 SE' with identical parameters" in by_number[9].main_reason


def test_only_t1_with_contrast_tag_is_t1ce_and_the_other_stays_t1() -> None:
    pre = mr("t1_mprage_sag", number=4, time="101000", **MPRAGE)
    post = mr("t1_mprage_sag", number=12, time="104000", agent="Dotarem", **MPRAGE)
    by_number = {c.series_number: c for c in _study((pre, 176), (post, 176))}
    assert by_number[4].role == R.T1
    assert by_number[12].role == R.T1CE


def test_two_equal_candidates_are_kept_and_marked_ambiguous() -> None:
    single = classify_series(mr("AX T2 TSE", **T2_TSE), 30)
    first = mr("AX T2 TSE", number=5, **T2_TSE)
    second = mr("AX T2 TSE", number=6, **T2_TSE)
    results = _study((first, 30), (second, 30))
    assert [c.role for c in results] == [R.T2, R.T2]
    for c in results:
        assert c.is_ambiguous
        assert c.confidence < single.confidence
        ambiguous = next(r for r in c.reasons if r.startswith("ambiguous:"))
        assert "series 5 'AX T2 TSE' and series 6 'AX T2 TSE'" in ambiguous


def test_distinct_series_of_different_roles_are_not_ambiguous() -> None:
    results = _study((mr("AX T2 TSE", number=2, **T2_TSE), 30), (mr("AX FLAIR", number=3, **FLAIR_2D), 30))
    assert not any(c.is_ambiguous for c in results)


def test_study_is_returned_in_series_number_order() -> None:
    results = _study((mr("b", number=11, **T2_TSE), 1), (mr("a", number=2, **FLAIR_2D), 1), (mr("c", **T1_SE), 1))
    assert [c.series_number for c in results] == [2, 11, None]


def _glioma_study() -> list[SeriesClassification]:
    return _study(
        (mr("localizer", number=1, time="100000", **FAST_GRE), 3),
        (mr("t1_mprage_sag_p2_iso", number=2, time="100500", **MPRAGE), 176),
        (mr("t2_tse_tra", number=3, time="101500", **T2_TSE), 30),
        (mr("t2_tirm_tra_dark-fluid", number=4, time="102000", **FLAIR_2D), 30),
        (mr("t1_se_tra_post", number=5, time="103000", agent="Gadovist", **T1_SE), 24),
        (mr("t1_mprage_sag_p2_iso_post", number=6, time="103500", agent="Gadovist", **MPRAGE), 176),
        (mr("t1_mprage_sag_p2_iso_MPR_tra", number=7, time="103500",
            image_type=("DERIVED", "SECONDARY", "MPR"), **MPRAGE), 60),
    )


def test_select_inputs_picks_one_series_per_role_preferring_3d() -> None:
    chosen = select_inputs(_glioma_study(), GLIOMA_INPUT_ROLES, study_key="abc123")
    assert {role: c.series_number for role, c in chosen.items()} == {R.T1: 2, R.T1CE: 6, R.T2: 3, R.FLAIR: 4}


def test_select_inputs_prefers_the_later_of_two_equal_t1ce() -> None:
    results = _study((mr("t1_mprage_Gd", number=8, time="103000", agent="Gd", **MPRAGE), 176),
                     (mr("t1_mprage_Gd", number=9, time="104500", agent="Gd", **MPRAGE), 176))
    assert all(c.role == R.T1CE and c.is_ambiguous for c in results)
    assert select_inputs(results, [R.T1CE])[R.T1CE].series_number == 9


def test_select_inputs_raises_missing_sequence_naming_the_missing_role_and_what_was_found() -> None:
    study = [c for c in _glioma_study() if c.series_number != 4]  # no FLAIR
    with pytest.raises(MissingSequence) as raised:
        select_inputs(study, GLIOMA_INPUT_ROLES, study_key="abc123")
    error = raised.value
    assert error.study_key == "abc123"
    assert error.reason.startswith("no FLAIR series found (required: T1, T1CE, T2, FLAIR)")
    assert "series 3 't2_tse_tra' = T2" in error.reason
    assert "series 1 'localizer' = other" in error.reason
    assert "site rule" in error.reason


def test_missing_sequence_names_every_missing_role() -> None:
    with pytest.raises(MissingSequence, match="no T1CE or FLAIR series found"):
        select_inputs(_study((mr("t1", **T1_SE), 20), (mr("t2", **T2_TSE), 20)), GLIOMA_INPUT_ROLES)


def test_format_table_shows_every_series_with_role_confidence_dimension_and_main_reason() -> None:
    results = _glioma_study()
    table = format_table(results).splitlines()
    assert table[0].split() == ["#", "Description", "Role", "Conf", "Acq", "Main", "reason"]
    assert len(table) == len(results) + 1
    flair = next(line for line in table if "t2_tirm_tra_dark-fluid" in line)
    assert flair.split()[:5] == ["4", "t2_tirm_tra_dark-fluid", "FLAIR", f"{results[3].confidence:.2f}", "2D"]
    assert "matches FLAIR patterns" in flair
    mpr = next(line for line in table if line.lstrip().startswith("7 "))
    assert " other " in mpr and "reformat" in mpr and "DERIVED" in mpr


# --- the DICOM writer's vendor presets ---------------------------------------------------------------


def _preset_header(vendor: Vendor, preset: SequencePreset, description: str) -> Dataset:
    kwargs: dict[str, Any] = {}
    if preset.modality == "MR":
        kwargs = {"seq": preset.scanning_sequence, "variant": preset.sequence_variant,
                  "acq": preset.acquisition_type, "seqname": preset.sequence_name, "tr": preset.repetition_time_ms,
                  "te": preset.echo_time_ms, "ti": preset.inversion_time_ms, "flip": preset.flip_angle_deg,
                  "b": preset.diffusion_b_value}
    return mr(description, protocol=preset.protocol_name, manufacturer=EQUIPMENT[vendor].manufacturer,
              modality=preset.modality, image_type=preset.image_type, agent=preset.contrast_agent,
              **kwargs)


PRESET_NAMES = [(v, role, name) for v, presets in PRESETS.items() for role, p in presets.items()
                for name in (p.series_description, *p.also_seen_as)]
# A minimum-intensity projection with ImageType DERIVED is a display reformat, never a pipeline input,
# although the writer lists its name among those an SWI goes by.
DERIVED_PROJECTIONS = {"t2_swi_tra_mIP"}


@pytest.mark.parametrize(("vendor", "role", "name"), PRESET_NAMES, ids=[f"{v}-{n}" for v, _, n in PRESET_NAMES])
def test_every_name_the_dicom_writer_uses_is_routed_to_its_role(vendor: Vendor, role: SeriesRole, name: str) -> None:
    preset = PRESETS[vendor][role]
    result = classify_series(_preset_header(vendor, preset, name), 60)
    derived = preset.image_type[0] == "DERIVED" and name in DERIVED_PROJECTIONS
    assert result.role == (R.OTHER if derived else role), "\n".join(result.reasons)
