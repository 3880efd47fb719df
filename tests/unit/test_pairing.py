"""Pairing a patient's studies: order in time, which change pipelines a consecutive pair qualifies for
(matched on role and protocol), and a clear refusal of a study that cannot be placed in time."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from pydicom.dataset import Dataset

from neuroflow.core.dicom_io import SeriesInstances, StudyIndex, study_key
from neuroflow.core.errors import StudyError
from neuroflow.core.roles import ChangePipeline, SeriesRole
from neuroflow.longitudinal.pairing import StudyTimepoint, group_by_patient, plan_pairs, timepoint_of


def _header(**tags: object) -> Dataset:
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _study(uid: str, series: Mapping[SeriesRole, Mapping[str, object]], *, patient: str = "P1",
           study_date: str | None = "20240101", study_time: str = "101500") -> tuple[StudyIndex, dict[SeriesRole, str]]:
    index = StudyIndex(uid, patient)
    chosen: dict[SeriesRole, str] = {}
    for number, (role, tags) in enumerate(series.items(), start=1):
        series_uid = f"{uid}.{number}"
        dated = {"StudyDate": study_date, "StudyTime": study_time} if study_date else {}
        header = _header(SeriesInstanceUID=series_uid, SeriesDescription=str(role), **dated, **tags)
        index.series[series_uid] = SeriesInstances(uid, series_uid, headers=[header], paths=["-"])
        chosen[role] = series_uid
    return index, chosen


FLAIR_3D = {"MRAcquisitionType": "3D", "SliceThickness": "1.0"}
FLAIR_2D_3MM = {"MRAcquisitionType": "2D", "SliceThickness": "3.0"}
CT_PLAIN = {"Modality": "CT", "SliceThickness": "5.0"}


def _timepoint(uid: str, series: Mapping[SeriesRole, Mapping[str, object]], *, study_date: str | None = "20240101",
               study_time: str = "101500") -> StudyTimepoint:
    index, chosen = _study(uid, series, study_date=study_date, study_time=study_time)
    return timepoint_of(index, chosen)


def test_timepoints_are_paired_oldest_first_whatever_order_they_come_in() -> None:
    later = _timepoint("1.3", {SeriesRole.FLAIR: FLAIR_3D}, study_date="20240601")
    first = _timepoint("1.1", {SeriesRole.FLAIR: FLAIR_3D}, study_date="20230101")
    middle = _timepoint("1.2", {SeriesRole.FLAIR: FLAIR_3D}, study_date="20240101", study_time="0800")
    plans = plan_pairs([later, first, middle])
    assert [(p.baseline.study_instance_uid, p.followup.study_instance_uid) for p in plans] == [
        ("1.1", "1.2"), ("1.2", "1.3")]
    assert all(p.pipelines == (ChangePipeline.MS,) for p in plans)


def test_same_day_studies_are_ordered_by_study_time() -> None:
    afternoon = _timepoint("2.1", {SeriesRole.CT: CT_PLAIN}, study_time="153000")
    morning = _timepoint("2.2", {SeriesRole.CT: CT_PLAIN}, study_time="081500")
    (plan,) = plan_pairs([afternoon, morning])
    assert (plan.baseline.study_instance_uid, plan.followup.study_instance_uid) == ("2.2", "2.1")
    assert plan.pipelines == (ChangePipeline.HAEMATOMA,)


def test_a_study_without_study_date_falls_back_to_the_series_date() -> None:
    timepoint = _timepoint("3.1", {SeriesRole.FLAIR: {**FLAIR_3D, "SeriesDate": "20220505", "SeriesTime": "1200"}},
                           study_date=None)
    assert (timepoint.study_date, timepoint.study_time) == ("20220505", "1200")


def test_a_prior_without_any_date_is_refused_naming_the_study() -> None:
    index, chosen = _study("4.1", {SeriesRole.FLAIR: FLAIR_3D}, study_date=None)
    with pytest.raises(StudyError) as caught:
        timepoint_of(index, chosen)
    assert caught.value.study_key == study_key("4.1")
    assert "no StudyDate" in caught.value.reason


def test_a_missing_flair_at_baseline_says_which_timepoint_lacks_it() -> None:
    baseline = _timepoint("5.1", {SeriesRole.T1: FLAIR_3D}, study_date="20230101")
    followup = _timepoint("5.2", {SeriesRole.FLAIR: FLAIR_3D}, study_date="20240101")
    (plan,) = plan_pairs([baseline, followup])
    assert plan.pipelines == ()
    assert "baseline" in plan.not_run[ChangePipeline.MS] and "FLAIR" in plan.not_run[ChangePipeline.MS]


def test_flair_protocols_must_match_3d_with_3d_and_2d_slices_of_similar_thickness() -> None:
    def ms_reason(base: Mapping[str, object], follow: Mapping[str, object]) -> str | None:
        (plan,) = plan_pairs([_timepoint("6.1", {SeriesRole.FLAIR: base}, study_date="20230101"),
                              _timepoint("6.2", {SeriesRole.FLAIR: follow}, study_date="20240101")])
        return plan.not_run.get(ChangePipeline.MS)

    assert ms_reason(FLAIR_3D, FLAIR_3D) is None
    assert ms_reason(FLAIR_2D_3MM, {"MRAcquisitionType": "2D", "SliceThickness": "3.5"}) is None
    mixed = ms_reason(FLAIR_3D, FLAIR_2D_3MM)
    assert mixed is not None and "3D at baseline, 2D at follow-up" in mixed
    thick = ms_reason(FLAIR_2D_3MM, {"MRAcquisitionType": "2D", "SliceThickness": "6.0"})
    assert thick is not None and "3 mm at baseline, 6 mm at follow-up" in thick


def test_contrast_enhanced_ct_does_not_qualify_for_haematoma_expansion() -> None:
    (plan,) = plan_pairs([_timepoint("7.1", {SeriesRole.CT: CT_PLAIN}, study_date="20230101"),
                          _timepoint("7.2", {SeriesRole.CT: {**CT_PLAIN, "ContrastBolusAgent": "Iomeprol"}},
                                     study_date="20230102")])
    assert ChangePipeline.HAEMATOMA not in plan.pipelines
    assert "contrast-enhanced" in plan.not_run[ChangePipeline.HAEMATOMA]


def test_glioma_inputs_at_both_timepoints_qualify_for_tumour_growth_and_ms() -> None:
    glioma = {role: FLAIR_3D for role in (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2, SeriesRole.FLAIR)}
    (plan,) = plan_pairs([_timepoint("8.1", glioma, study_date="20230101"),
                          _timepoint("8.2", glioma, study_date="20230401")])
    assert set(plan.pipelines) == {ChangePipeline.MS, ChangePipeline.TUMOUR_GROWTH}


def test_studies_are_grouped_by_patient() -> None:
    a, _ = _study("9.1", {}, patient="A")
    b, _ = _study("9.2", {}, patient="B")
    c, _ = _study("9.3", {}, patient="A")
    grouped = group_by_patient([a, b, c])
    assert {who.patient_id: [s.study_instance_uid for s in studies] for who, studies in grouped.items()} == {
        "A": ["9.1", "9.3"], "B": ["9.2"]}


@pytest.mark.parametrize("patient_id", ["", "   ", "*", "NF-00?2", "A\\B"])
def test_studies_without_a_usable_patient_id_are_no_patients_and_never_paired(patient_id: str) -> None:
    a, chosen = _study("10.1", {SeriesRole.FLAIR: FLAIR_3D}, patient=patient_id)
    b, _ = _study("10.2", {SeriesRole.FLAIR: FLAIR_3D}, patient=patient_id, study_date="20240301")
    assert group_by_patient([a, b]) == {}
    with pytest.raises(StudyError, match="PatientID") as refused:
        timepoint_of(a, chosen)
    assert refused.value.study_key == study_key("10.1")


def test_the_same_patient_id_from_another_issuer_is_another_patient() -> None:
    a, _ = _study("11.1", {SeriesRole.FLAIR: {**FLAIR_3D, "IssuerOfPatientID": "HOSPITAL-A"}}, patient="P7")
    b, _ = _study("11.2", {SeriesRole.FLAIR: {**FLAIR_3D, "IssuerOfPatientID": "HOSPITAL-B"}}, patient="P7")
    assert len(group_by_patient([a, b])) == 2


def test_the_metastases_follow_up_is_planned_only_when_asked_for() -> None:
    # Every glioma pair has a T1CE at both timepoints: the metastases follow-up is the metastases pipeline's,
    # planned when a caller asks for it (embedded: --pipeline metastases), never by default.
    glioma = {role: FLAIR_3D for role in (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2, SeriesRole.FLAIR)}
    timepoints = [_timepoint("9.1", glioma, study_date="20230101"), _timepoint("9.2", glioma, study_date="20230401")]
    (default,) = plan_pairs(timepoints)
    assert ChangePipeline.METASTASES_RESPONSE not in default.pipelines
    assert ChangePipeline.METASTASES_RESPONSE not in default.not_run
    (asked,) = plan_pairs(timepoints, [ChangePipeline.METASTASES_RESPONSE])
    assert asked.pipelines == (ChangePipeline.METASTASES_RESPONSE,)
    flair_only = {SeriesRole.FLAIR: FLAIR_3D}
    (without,) = plan_pairs([_timepoint("9.3", glioma, study_date="20230101"),
                             _timepoint("9.4", flair_only, study_date="20230401")],
                            [ChangePipeline.METASTASES_RESPONSE])
    assert not without.pipelines and "T1CE" in without.not_run[ChangePipeline.METASTASES_RESPONSE]
