"""De-identification by the DICOM PS3.15 Basic Application Level Confidentiality Profile with the Retain
Longitudinal Temporal Information With Full Dates Option, checked against the profile's attribute table
(deid/basic_profile.csv, Table E.1-1): removed, emptied, replaced and kept attributes, UIDs replaced
consistently across the objects of a study and their references, dates kept, the re-identification map at
the site, and a de-identified image that is still valid DICOM (dciodvfy)."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from pydantic import SecretStr
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.deid.deidentify import DeidentificationRefused, Deidentifier
from neuroflow.deid.profile import Action, profile_table
from neuroflow.deid.reidentification import Kind, ReidentificationMap
from neuroflow.devtools.dicom_writer import PatientInfo, load_volume, write_study

DATA = Path(__file__).resolve().parents[1] / "data"
GLIOMA_T1C = DATA / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"
SECRET = SecretStr("a-site-secret-for-these-tests")
PATIENT = PatientInfo(patient_id="NF-DEID-0042", name="TESTPERSON^ALICE", birth_date="19700101", sex="F")
UID_PATTERN = re.compile(r"^2\.25\.[1-9][0-9]{0,38}$")

_VALUES: dict[str, object] = {
    "AE": "STATION7", "AS": "045Y", "CS": "ORIGINAL", "DA": "20200102", "DS": "1.5", "DT": "20200102030405",
    "FL": 1.5, "FD": 1.5, "IS": "7", "LO": "original text", "LT": "original text", "OB": b"\x01\x02",
    "OW": b"\x01\x02", "PN": "Original^Person", "SH": "original", "SL": 5, "SS": 5, "ST": "original text",
    "TM": "101010", "UL": 5, "US": 5, "UT": "original text", "UN": b"\x01\x02", "UC": "original text",
}


@pytest.fixture()
def deidentifier(tmp_path: Path) -> Deidentifier:
    return Deidentifier(SECRET, ReidentificationMap(tmp_path / "state" / "reid.sqlite3"))


@pytest.fixture(scope="module")
def two_slices(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two instances of one MR series of one made-up patient, as the dev writer writes them."""
    volume = load_volume(GLIOMA_T1C)
    small = Volume.from_sitk(volume.to_sitk()[100:124, 100:124, 60:62], volume.meta)
    written = write_study({SeriesRole.T1CE: small}, tmp_path_factory.mktemp("study"), patient=PATIENT,
                          seed="deid-test")
    return written.series[SeriesRole.T1CE].paths


def _every_attribute_of_the_table() -> Dataset:
    """A data set holding every attribute of Table E.1-1 that the DICOM dictionary knows, each with an
    original value of its VR (a UID unique to it; a sequence item holding a reference)."""
    ds = Dataset()
    for tag, row in profile_table().items():
        if tag >> 16 in (0x0000, 0x0002):  # command and file meta groups: not in a data set's body
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        if vr == "SQ":
            item = Dataset()
            item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.99.{tag}.1"
            item.CodeMeaning = "original text"
            value: object = Sequence([item])
        elif vr == "UI":
            value = f"1.2.826.0.1.3680043.99.{tag}"
        elif vr == "AT":
            value = 0x00100020
        else:
            value = _VALUES[vr]
        ds.add_new(tag, vr, value)
        assert ds[tag].keyword == row.keyword
    return ds


def _empty(value: object) -> bool:
    return value is None or value == "" or (hasattr(value, "__len__") and len(value) == 0)  # type: ignore[arg-type]


def test_every_attribute_of_the_profile_table_gets_its_action(deidentifier: Deidentifier) -> None:
    original = _every_attribute_of_the_table()
    out = deidentifier.deidentify(original)
    checked: dict[Action, int] = {}
    for tag, row in profile_table().items():
        if tag not in original:
            continue
        action = row.action(retain_full_dates=True)
        checked[action] = checked.get(action, 0) + 1
        before = original[tag].value
        if action is Action.REMOVE:
            assert tag not in out, f"{row.keyword} ({row.basic}) must be removed"
        elif action is Action.EMPTY and row.keyword in ("PatientID", "PatientName"):
            assert str(out[tag].value).startswith("NF-"), "the patient keeps a pseudonym, not the original"
        elif action is Action.EMPTY:
            assert tag in out and _empty(out[tag].value), f"{row.keyword} ({row.basic}) must be present and empty"
        elif action is Action.KEEP:
            assert out[tag].value == before, f"{row.keyword} is kept under the Full Dates Option"
        elif action is Action.NEW_UID:
            assert out[tag].value == deidentifier.uid(before) and UID_PATTERN.match(out[tag].value), row.keyword
        elif action is Action.DUMMY and original[tag].VR == "SQ":
            assert tag in out and len(out[tag].value) == 1, f"{row.keyword}: a dummy sequence"
            assert out[tag].value[0].ReferencedSOPInstanceUID == deidentifier.uid(before[0].ReferencedSOPInstanceUID)
        elif action is Action.DUMMY:
            assert tag in out and not _empty(out[tag].value) and out[tag].value != before, (
                f"{row.keyword} ({row.basic}) must be replaced by a dummy value")
        elif action is Action.CLEAN_ITEMS:
            item = out[tag].value[0]
            assert item.ReferencedSOPInstanceUID == deidentifier.uid(before[0].ReferencedSOPInstanceUID)
    # The table exercises every kind of action (a table read wrong would not).
    assert set(checked) == set(Action), checked
    assert checked[Action.REMOVE] > 150 and checked[Action.NEW_UID] > 20


def test_the_objects_of_one_study_keep_their_references_with_new_uids(two_slices: list[Path],
                                                                      deidentifier: Deidentifier) -> None:
    first, second = (pydicom.dcmread(p) for p in two_slices)
    reference = Dataset()
    reference.ReferencedSOPClassUID = first.SOPClassUID
    reference.ReferencedSOPInstanceUID = first.SOPInstanceUID
    second.ReferencedImageSequence = Sequence([reference])
    a, b = deidentifier.deidentify(first), deidentifier.deidentify(second)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert a.get(keyword) == b.get(keyword) != first.get(keyword), keyword
        assert UID_PATTERN.match(a.get(keyword))
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.SOPClassUID == first.SOPClassUID  # what the object is, kept
    assert a.PatientID == b.PatientID and a.PatientID != PATIENT.patient_id
    # Another site (another secret) gets other UIDs and pseudonyms: nothing links the two exports.
    other = Deidentifier(SecretStr("another-site"), ReidentificationMap(Path(two_slices[0]).parent / "other.db"))
    c = other.deidentify(first)
    assert c.StudyInstanceUID != a.StudyInstanceUID and c.PatientID != a.PatientID


def test_dates_and_times_are_kept_and_identifiers_are_not(two_slices: list[Path],
                                                          deidentifier: Deidentifier) -> None:
    original = pydicom.dcmread(two_slices[0])
    out = deidentifier.deidentify(original)
    for keyword in ("StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "ContentDate"):
        if keyword in original:
            assert out.get(keyword) == original.get(keyword), keyword
    assert out.PatientBirthDate in ("", None) and out.AccessionNumber in ("", None)
    assert "InstitutionName" not in original or out.InstitutionName != original.InstitutionName
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_the_map_at_the_site_re_identifies_a_pseudonym(two_slices: list[Path], tmp_path: Path) -> None:
    path = tmp_path / "site" / "reid.sqlite3"
    reid_map = ReidentificationMap(path)
    original = pydicom.dcmread(two_slices[0])
    out = Deidentifier(SECRET, reid_map).deidentify(original)
    assert reid_map.original(Kind.PATIENT, out.PatientID) == PATIENT.patient_id
    assert reid_map.original(Kind.STUDY, out.StudyInstanceUID) == original.StudyInstanceUID
    assert reid_map.original(Kind.SERIES, out.SeriesInstanceUID) == original.SeriesInstanceUID
    assert reid_map.original(Kind.PATIENT, "NF-NOBODY") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_de_identified_file_reads_back_marked_and_without_private_or_identifying_values(
    two_slices: list[Path], deidentifier: Deidentifier, tmp_path: Path
) -> None:
    original = pydicom.dcmread(two_slices[0])
    block = original.private_block(0x0009, "SOME VENDOR", create=True)
    block.add_new(0x01, "LO", PATIENT.name)
    path = tmp_path / "deid.dcm"
    deidentifier.deidentify(original).save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.PatientIdentityRemoved == "YES"
    assert [(c.CodeValue, c.CodingSchemeDesignator) for c in back.DeidentificationMethodCodeSequence] == [
        ("113100", "DCM"), ("113106", "DCM")]
    assert not any(element.tag.is_private for element in back)
    raw = path.read_bytes()
    for identifier in (PATIENT.patient_id, PATIENT.name, str(original.StudyInstanceUID),
                       str(original.SOPInstanceUID), str(original.AccessionNumber)):
        assert identifier.encode() not in raw, identifier
    assert (back.pixel_array == original.pixel_array).all()


def test_a_de_identified_image_passes_dciodvfy_with_no_new_errors(
    two_slices: list[Path], deidentifier: Deidentifier, tmp_path: Path
) -> None:
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy not found: install dicom3tools (Debian package 'dicom3tools')")
    path = tmp_path / "deid.dcm"
    deidentifier.deidentify(pydicom.dcmread(two_slices[0])).save_as(path, enforce_file_format=True)

    def errors(file: Path) -> set[str]:
        result = subprocess.run([dciodvfy, str(file)], capture_output=True, text=True, timeout=60)
        return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}

    assert errors(path) - errors(two_slices[0]) == set()


def test_an_object_with_burned_in_annotation_is_refused(two_slices: list[Path], deidentifier: Deidentifier) -> None:
    original = pydicom.dcmread(two_slices[0])
    original.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationRefused, match="burned-in annotation"):
        deidentifier.deidentify(original)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neuroflow.cli", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


def test_neuroflow_deidentify_exports_a_folder_and_keeps_the_map_at_the_site(two_slices: list[Path],
                                                                            tmp_path: Path) -> None:
    map_path = tmp_path / "site" / "reid.sqlite3"
    secret_file = tmp_path / "key-secret"
    secret_file.write_text(SECRET.get_secret_value() + "\n")
    env = {"NEUROFLOW_KEYS__SECRET": "", "NEUROFLOW_KEYS__SECRET_FILE": str(secret_file),
           "NEUROFLOW_DEID__MAP_PATH": str(map_path)}
    done = _cli(["deidentify", str(two_slices[0].parent), "--out", str(tmp_path / "out")], env)
    assert done.returncode == 0, done.stderr
    written = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(written) == len(two_slices)
    original = pydicom.dcmread(two_slices[0])
    for path in written:
        raw = path.read_bytes()
        assert PATIENT.patient_id.encode() not in raw and str(original.StudyInstanceUID).encode() not in raw
        assert PATIENT.patient_id not in str(path)
    pseudonym = pydicom.dcmread(written[0]).PatientID
    assert Deidentifier(SECRET, ReidentificationMap(map_path)).patient_pseudonym(PATIENT.patient_id, "") == pseudonym
    assert ReidentificationMap(map_path).original(Kind.PATIENT, pseudonym) == PATIENT.patient_id
    assert SECRET.get_secret_value() not in done.stdout + done.stderr


def test_neuroflow_deidentify_refuses_to_run_without_the_site_secret(two_slices: list[Path],
                                                                    tmp_path: Path) -> None:
    done = _cli(["deidentify", str(two_slices[0].parent), "--out", str(tmp_path / "out")],
                {"NEUROFLOW_KEYS__SECRET": "", "NEUROFLOW_DEID__MAP_PATH": str(tmp_path / "reid.sqlite3")})
    assert done.returncode == 2 and "NEUROFLOW_KEYS__SECRET" in done.stderr
    assert not (tmp_path / "out").exists()
