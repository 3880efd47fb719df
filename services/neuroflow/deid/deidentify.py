"""De-identify one DICOM object by the Basic Application Level Confidentiality Profile with the Retain
Longitudinal Temporal Information With Full Dates Option (profile.py has the table and the choices made).

* UIDs (U) become ``2.25.<integer>`` from an HMAC-SHA256 of the original with the site's key secret: the same
  original gives the same replacement in every object and every run of the site, so references between
  objects (a SEG's source images, a series' frame of reference) still point at the right object, and no one
  without the secret can recompute them from candidate UIDs.
* PatientID and PatientName (Z) get the patient's pseudonym rather than nothing, so a research set still
  groups a patient's timepoints; AccessionNumber, StudyID and the other Z attributes are emptied.
* All private attributes are removed (the Retain Safe Private Option is not supported), and so is the file
  meta's Source AE Title.
* Pixel data is not cleaned (the Clean Pixel Data and Clean Recognizable Visual Features Options are not
  claimed): an object that says it has burned-in annotation is refused.
* PatientIdentityRemoved is YES, DeidentificationMethod(CodeSequence) names the profile (113100) and the
  option (113106), and LongitudinalTemporalInformationModified is UNMODIFIED.
"""

from __future__ import annotations

import copy
import hashlib
import hmac

from pydantic import SecretStr
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from neuroflow.core.patient_id import patient_id_problem
from neuroflow.deid.profile import Action, action_for
from neuroflow.deid.reidentification import Kind, ReidentificationMap

# DeidentificationMethodCodeSequence (DCM codes of PS3.16 CID 7050).
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
FULL_DATES_OPTION_CODE = ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
DEIDENTIFICATION_METHOD = "PS3.15 E.1 Basic Profile, Retain Longitudinal Full Dates"  # LO: 64 characters
# The dummy value (D) of each VR: valid for the VR, obviously not a real value.
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"PN": _DUMMY_TEXT, "LO": _DUMMY_TEXT, "SH": _DUMMY_TEXT, "LT": _DUMMY_TEXT, "ST": _DUMMY_TEXT,
          "UT": _DUMMY_TEXT, "UC": _DUMMY_TEXT, "CS": "ANONYMIZED", "AE": "ANONYMIZED", "DA": "19000101",
          "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0", "US": 0, "SS": 0,
          "UL": 0, "SL": 0, "FL": 0.0, "FD": 0.0}
PSEUDONYM_PREFIX = "NF-"


class DeidentificationRefused(ValueError):
    """An object this profile cannot make safe (e.g. burned-in annotation in its pixels)."""


class Deidentifier:
    """De-identifies objects of one site with its key secret, recording every pseudonym in ``reid_map``."""

    def __init__(self, secret: SecretStr, reid_map: ReidentificationMap) -> None:
        if not secret.get_secret_value():
            raise ValueError("de-identification needs the site key secret")
        self._secret = secret.get_secret_value().encode()
        self._map = reid_map

    def _digest(self, purpose: str, value: str) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\x00" + value.encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """The replacement of the UID ``original``: ``2.25.`` and 128 bits of its keyed hash (PS3.5 B.2)."""
        return "2.25." + str(int.from_bytes(self._digest("uid", original.strip())[:16], "big"))

    def patient_pseudonym(self, patient_id: str, study_instance_uid: str) -> str:
        """The patient's pseudonym: from the PatientID when it can identify a patient; else from the study
        (studies without a usable PatientID must not be grouped as one patient)."""
        if patient_id_problem(patient_id) is None:
            return PSEUDONYM_PREFIX + self._digest("patient", patient_id.strip()).hex()[:16].upper()
        return PSEUDONYM_PREFIX + "S" + self._digest("patient-of-study", study_instance_uid).hex()[:15].upper()

    def deidentify(self, dataset: Dataset) -> Dataset:
        """A de-identified copy of ``dataset`` (with its file meta, if any); the original is not changed.
        Refuses (DeidentificationRefused) an object with burned-in annotation."""
        if str(dataset.get("BurnedInAnnotation", "")).upper() == "YES":
            raise DeidentificationRefused("the object has burned-in annotation (0028,0301) in its pixel data, "
                                          "which this profile does not clean")
        patient_id = str(dataset.get("PatientID", "") or "")
        study_uid = str(dataset.get("StudyInstanceUID", "") or "")
        series_uid = str(dataset.get("SeriesInstanceUID", "") or "")
        pseudonym = self.patient_pseudonym(patient_id, study_uid)
        out = copy.deepcopy(dataset)
        self._clean(out)
        out.PatientID = pseudonym
        out.PatientName = pseudonym
        out.PatientIdentityRemoved = "YES"
        out.DeidentificationMethod = DEIDENTIFICATION_METHOD
        out.DeidentificationMethodCodeSequence = Sequence([_code(*BASIC_PROFILE_CODE), _code(*FULL_DATES_OPTION_CODE)])
        out.LongitudinalTemporalInformationModified = "UNMODIFIED"
        meta = getattr(out, "file_meta", None)
        if meta is not None:
            if "SOPInstanceUID" in out:
                meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
            if "SourceApplicationEntityTitle" in meta:
                del meta.SourceApplicationEntityTitle  # names the sending system of the site
        self._map.record([(kind, replacement, original) for kind, replacement, original in (
            (Kind.PATIENT, pseudonym, patient_id), (Kind.STUDY, self.uid(study_uid) if study_uid else "", study_uid),
            (Kind.SERIES, self.uid(series_uid) if series_uid else "", series_uid)) if original])
        return out

    def _clean(self, dataset: Dataset) -> None:
        """Apply the profile to every attribute of ``dataset`` and, recursively, of its sequences' items."""
        for tag in list(dataset.keys()):
            element = dataset[tag]
            if element.tag.is_private:
                del dataset[tag]
                continue
            action = action_for(int(element.tag))
            if action is None or action is Action.CLEAN_ITEMS:
                if element.VR == "SQ":
                    for item in element.value:
                        self._clean(item)
                elif action is Action.CLEAN_ITEMS and element.VR == "UI":
                    self._new_uids(element)
            elif action is Action.REMOVE:
                del dataset[tag]
            elif action is Action.EMPTY:
                element.value = Sequence() if element.VR == "SQ" else None
            elif action is Action.DUMMY:
                self._dummy(element)
            elif action is Action.NEW_UID:
                self._new_uids(element)
            # Action.KEEP: as it is

    def _dummy(self, element: DataElement) -> None:
        if element.VR == "SQ":  # a dummy sequence: the same items, themselves de-identified
            for item in element.value:
                self._clean(item)
        elif element.VR == "UI":
            self._new_uids(element)
        elif element.VR in _DUMMY:
            element.value = _DUMMY[element.VR]
        else:  # a binary VR the table never asks a dummy of: nothing is safer than a value
            element.value = None

    def _new_uids(self, element: DataElement) -> None:
        value = element.value
        if isinstance(value, MultiValue | list):
            element.value = [self.uid(str(v)) for v in value]
        elif value:
            element.value = self.uid(str(value))


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item
