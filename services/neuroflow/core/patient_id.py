"""Which PatientID can find a patient's other studies, and when two studies are of the same patient.

The change pipelines find a follow-up's prior by PatientID alone: in the site's Orthanc (``/tools/find``)
and on the PACS (C-FIND, then C-MOVE). A PatientID that is empty (or missing, or only spaces) is a universal
match in a C-FIND, and one that holds ``*`` or ``?`` is a wildcard pattern: either would pull other patients'
studies in and compare the follow-up with one of them. ``\\`` separates the values of a multi-valued
attribute, which a C-FIND reads as "any of these". :func:`patient_id_problem` is THE rule (every runtime and
the patient key ask it); :func:`same_patient` is how an answer is kept: PatientID, and IssuerOfPatientID when
either side has one, equal exactly (a PACS that matches case-insensitively or by wildcard must not slip
another patient in)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # dicom_io needs identity (our Manufacturer), which needs this module
    from neuroflow.core.dicom_io import StudyIndex

# Characters a C-FIND (and Orthanc's /tools/find) reads as matching more than the value itself.
MATCHING_CHARACTERS = ("*", "?", "\\")


def patient_id_problem(patient_id: str | None) -> str | None:
    """None when ``patient_id`` can find (and pair) the patient's studies; else why not, in a sentence a
    person can act on. The sentence never repeats the value (it identifies a patient)."""
    if patient_id is None:
        what = "has no PatientID (0010,0020)"
    elif not patient_id.strip():
        what = "has an empty PatientID (0010,0020)" if not patient_id else "has a PatientID of spaces only"
    else:
        found = [c for c in MATCHING_CHARACTERS if c in patient_id]
        if not found:
            return None
        what = (f"has a PatientID holding {' and '.join(repr(c) for c in found)}, which a C-FIND reads as a "
                "wildcard or a list of IDs")
    return (f"the study {what}: its priors cannot be told from other patients' studies, so none is looked up "
            "and it is compared with no other study; correct the PatientID at the modality or RIS and re-send it")


@dataclass(frozen=True)
class PatientIdentity:
    """Who a study belongs to, as DICOM says: PatientID and IssuerOfPatientID ("" when absent), stripped
    of the padding spaces DICOM ignores."""

    patient_id: str
    issuer: str = ""

    @classmethod
    def of_tags(cls, tags: Mapping[str, object]) -> PatientIdentity:
        """From keyword -> value tags (a C-FIND answer read with ``?simplify``, Orthanc's main tags)."""
        return cls(str(tags.get("PatientID") or "").strip(), str(tags.get("IssuerOfPatientID") or "").strip())

    @classmethod
    def of_study(cls, study: StudyIndex) -> PatientIdentity:
        """The study's indexed PatientID, and the IssuerOfPatientID of its first header (one patient per
        study, whatever the instance)."""
        issuer = next((str(s.headers[0].get("IssuerOfPatientID", "") or "") for s in study.series.values()
                       if s.headers), "")
        return cls(study.patient_id.strip(), issuer.strip())

    @property
    def problem(self) -> str | None:
        """:func:`patient_id_problem` of this PatientID."""
        return patient_id_problem(self.patient_id)


def same_patient(wanted: PatientIdentity, found: PatientIdentity) -> bool:
    """True only when ``wanted`` has a usable PatientID and ``found`` has exactly the same one and the same
    IssuerOfPatientID (both absent counts as the same; one absent does not: the same ID from another issuer
    is another patient)."""
    return wanted.problem is None and found.patient_id == wanted.patient_id and found.issuer == wanted.issuer
