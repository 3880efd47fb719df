"""The one rule for a PatientID that may find a patient's other studies, and how an answer is kept: an empty,
missing, blank or wildcard PatientID finds nothing and gets no patient key; an answer is the same patient only
when PatientID and IssuerOfPatientID are exactly the follow-up's."""

from __future__ import annotations

import pytest

from neuroflow.core.identity import patient_key
from neuroflow.core.patient_id import PatientIdentity, patient_id_problem, same_patient

UNUSABLE = [None, "", " ", "   \t", "*", "NF*", "NF-00?2", "A\\B", "?"]


@pytest.mark.parametrize("patient_id", UNUSABLE)
def test_an_empty_missing_blank_or_wildcard_patient_id_is_unusable_and_the_reason_does_not_repeat_it(
        patient_id: str | None) -> None:
    problem = patient_id_problem(patient_id)
    assert problem is not None
    assert "PatientID" in problem and "re-send" in problem
    if patient_id and len(patient_id.strip()) > 1:
        assert patient_id not in problem  # the value identifies a patient: never in a message


@pytest.mark.parametrize("patient_id", ["NF-MS-0042", "0042", "nf ms 0042", "Ünïcode-7", " padded "])
def test_an_ordinary_patient_id_is_usable(patient_id: str) -> None:
    assert patient_id_problem(patient_id) is None


@pytest.mark.parametrize("patient_id", [p for p in UNUSABLE if p is not None])
def test_no_patient_key_for_an_unusable_patient_id_so_id_less_studies_share_none(patient_id: str) -> None:
    assert patient_key(patient_id) is None


def test_the_patient_key_is_pseudonymous_stable_and_ignores_dicom_padding() -> None:
    key = patient_key("NF-MS-0042")
    assert key is not None and "0042" not in key and len(key) == 12
    assert patient_key("NF-MS-0042 ") == key
    assert patient_key("NF-MS-0043") != key


def test_an_answer_is_the_same_patient_only_on_an_exact_patient_id_and_issuer() -> None:
    wanted = PatientIdentity("NF-0042", "HOSP-A")
    assert same_patient(wanted, PatientIdentity.of_tags({"PatientID": "NF-0042 ", "IssuerOfPatientID": "HOSP-A"}))
    assert not same_patient(wanted, PatientIdentity.of_tags({"PatientID": "nf-0042", "IssuerOfPatientID": "HOSP-A"}))
    assert not same_patient(wanted, PatientIdentity.of_tags({"PatientID": "NF-00421", "IssuerOfPatientID": "HOSP-A"}))
    assert not same_patient(wanted, PatientIdentity.of_tags({"PatientID": "NF-0042", "IssuerOfPatientID": "HOSP-B"}))
    # An issuer on one side only: the same ID may be another hospital's patient.
    assert not same_patient(wanted, PatientIdentity.of_tags({"PatientID": "NF-0042"}))
    assert not same_patient(PatientIdentity("NF-0042"), PatientIdentity("NF-0042", "HOSP-A"))
    assert same_patient(PatientIdentity("NF-0042"), PatientIdentity.of_tags({"PatientID": "NF-0042",
                                                                              "IssuerOfPatientID": None}))


def test_nothing_is_the_same_patient_as_an_unusable_patient_id() -> None:
    assert not same_patient(PatientIdentity(""), PatientIdentity(""))
    assert not same_patient(PatientIdentity("*"), PatientIdentity("*"))
