"""Contract of neuroflow.core.dicom_io's DicomSource and DicomSink, run against every backend.

A backend here is a source and a sink over the same store (a folder; a real Orthanc the tests start,
tests/servers/orthanc.py, emptied for each test), plus
``deposit``: how a file arrives in the store the way a modality or a person would put it there. Adding a
backend is one entry in BACKENDS. Asserted: what the sink stores the source gives back equal, element
for element and pixel for pixel; storing an object again replaces it; a file anywhere in the store is
found; a file that is not DICOM never stops indexing and, if the store holds it, is listed with a reason.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from neuroflow.core.dicom_io import DicomSink, DicomSource, FolderDicomSink, FolderDicomSource, study_key
from neuroflow.core.errors import InputLimitExceeded, OrthancRequestFailed
from neuroflow.core.orthanc import OrthancDicomSink, OrthancDicomSource
from neuroflow.devtools.dicom_fuzz import rle_bomb

FixtureLookup = Callable[[str], Any]


@dataclass
class DicomStoreUnderTest:
    source: DicomSource
    sink: DicomSink
    # Put a file into the store at a path (a folder backend keeps it there; a server may ignore the path).
    # Returns whether the store now holds it (a server refuses non-DICOM uploads at the door).
    deposit: Callable[[str, bytes], bool]
    # Whether a second object with a stored SOP Instance UID replaces the first: a folder always does; an Orthanc
    # only where the site allows it (OverwriteInstances, off by default: a sender cannot rewrite what was stored).
    replaces: bool = True


@contextlib.contextmanager
def folder_store(scratch: Path, fixture: FixtureLookup) -> Iterator[DicomStoreUnderTest]:
    root = scratch / "dicom"

    def deposit(relative_path: str, content: bytes) -> bool:
        path = root / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return True

    yield DicomStoreUnderTest(FolderDicomSource(root), FolderDicomSink(root), deposit)


@contextlib.contextmanager
def orthanc_store(scratch: Path, fixture: FixtureLookup) -> Iterator[DicomStoreUnderTest]:
    client = fixture("orthancs").site_client

    def deposit(relative_path: str, content: bytes) -> bool:
        try:
            client.upload(content)  # as a modality's C-STORE would: the path is not Orthanc's business
        except OrthancRequestFailed as refused:
            assert refused.status in (400, 404), refused  # refused at the door, with a reason
            return False
        return True

    yield DicomStoreUnderTest(OrthancDicomSource(client), OrthancDicomSink(client), deposit, replaces=False)


BACKENDS: list[object] = [pytest.param(folder_store, id="folder"), pytest.param(orthanc_store, id="orthanc")]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DicomStoreUnderTest]:
    factory: Callable[[Path, FixtureLookup], contextlib.AbstractContextManager[DicomStoreUnderTest]] = request.param
    with factory(tmp_path, request.getfixturevalue) as under_test:
        yield under_test


STUDY_UID = generate_uid()
SERIES_UID = generate_uid()


def mr_slice(number: int, *, series_uid: str = SERIES_UID, sop_uid: str | None = None,
             name: str = "Müller^Jürgen", description: str = "AX FLAIR") -> Dataset:
    """One 4 x 3 pixel MR slice with the tags a real axial series has (UTF-8 character set)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid) if sop_uid else generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = "P-0042"
    ds.PatientName = name
    ds.Modality = "MR"
    ds.SeriesDescription = description
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [-120.0, -95.5, 10.0 + 5.0 * number]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.9375, 0.9375]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = 3, 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 100 + number).tobytes()
    return ds


def file_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def assert_same_object(got: Dataset, expected: Dataset) -> None:
    for element in expected:
        assert element.tag in got, f"{element.keyword} lost"
        if element.keyword == "PixelData":
            np.testing.assert_array_equal(got.pixel_array, expected.pixel_array)
        else:
            assert got[element.tag].value == element.value, element.keyword


def test_stored_objects_are_read_back_equal(store: DicomStoreUnderTest) -> None:
    slices = [mr_slice(n) for n in range(1, 4)]
    for ds in slices:
        assert store.sink.store(ds) == ds.SOPInstanceUID

    studies, skipped = store.source.index()

    assert skipped == []
    assert list(studies) == [STUDY_UID]
    assert studies[STUDY_UID].patient_id == "P-0042"
    series = studies[STUDY_UID].series[SERIES_UID]
    by_uid = {ds.SOPInstanceUID: ds for ds in store.source.read_instances(series)}
    assert sorted(by_uid) == sorted(ds.SOPInstanceUID for ds in slices)
    for ds in slices:
        assert_same_object(by_uid[ds.SOPInstanceUID], ds)
    assert sorted(store.sink.stored()) == sorted(ds.SOPInstanceUID for ds in slices)


def test_index_holds_headers_only_until_pixels_are_asked_for(store: DicomStoreUnderTest) -> None:
    store.sink.store(mr_slice(1))
    studies, _ = store.source.index()
    header = studies[STUDY_UID].series[SERIES_UID].headers[0]
    assert "PixelData" not in header
    assert header.SeriesDescription == "AX FLAIR" and str(header.PatientName) == "Müller^Jürgen"


def test_storing_the_same_sop_instance_twice_keeps_one_object(store: DicomStoreUnderTest) -> None:
    first = mr_slice(1, description="AX FLAIR")
    again = mr_slice(1, sop_uid=first.SOPInstanceUID, description="AX FLAIR corrected")

    store.sink.store(first)
    store.sink.store(again)

    assert store.sink.stored() == [first.SOPInstanceUID]
    studies, _ = store.source.index()
    series = studies[STUDY_UID].series[SERIES_UID]
    assert [h.SOPInstanceUID for h in series.headers] == [first.SOPInstanceUID]
    kept = store.source.read_instances(series)[0].SeriesDescription
    assert kept == ("AX FLAIR corrected" if store.replaces else "AX FLAIR")


def test_a_file_in_a_nested_folder_without_extension_is_found(store: DicomStoreUnderTest) -> None:
    ds = mr_slice(7)
    assert store.deposit("PATIENT1/STUDY1/SERIES3/IM000007", file_bytes(ds))

    studies, skipped = store.source.index()

    assert skipped == []
    series = studies[STUDY_UID].series[SERIES_UID]
    assert [h.SOPInstanceUID for h in series.headers] == [ds.SOPInstanceUID]
    assert_same_object(store.source.read_instances(series)[0], ds)


@pytest.mark.parametrize(("name", "content"), [
    ("notes/README.txt", b"scanned at 3T, see protocol sheet\n"),
    ("DICOMDIR-looking.dcm", b"\x00" * 128 + b"DICX" + b"\x01" * 64),
    ("empty.dcm", b""),
])
def test_a_file_that_is_not_dicom_is_skipped_with_a_reason_and_indexing_goes_on(
        store: DicomStoreUnderTest, name: str, content: bytes) -> None:
    good = mr_slice(1)
    store.sink.store(good)

    held = store.deposit(name, content)
    studies, skipped = store.source.index()

    assert [h.SOPInstanceUID for h in studies[STUDY_UID].series[SERIES_UID].headers] == [good.SOPInstanceUID]
    if held:
        assert len(skipped) == 1
        assert skipped[0].path.endswith(name)
        assert "DICOM" in skipped[0].reason  # says what is wrong with the file
    else:
        assert skipped == []


def test_a_dicom_file_without_identifying_uids_is_skipped_with_a_reason(store: DicomStoreUnderTest) -> None:
    orphan = mr_slice(2)
    del orphan.SeriesInstanceUID
    held = store.deposit("orphan.dcm", file_bytes(orphan))

    studies, skipped = store.source.index()

    assert studies == {}
    if held:
        assert [s.reason for s in skipped] == ["DICOM file without Study/Series/SOP Instance UID"]


def test_series_of_one_study_are_kept_apart(store: DicomStoreUnderTest) -> None:
    other_series = generate_uid()
    store.sink.store(mr_slice(1))
    store.sink.store(mr_slice(1, series_uid=other_series, description="AX T1 post"))

    studies, _ = store.source.index()

    assert sorted(studies[STUDY_UID].series) == sorted([SERIES_UID, other_series])
    assert studies[STUDY_UID].series[other_series].headers[0].SeriesDescription == "AX T1 post"


def test_a_series_over_the_input_limits_is_refused_from_its_headers_before_any_pixel_is_decoded(
        store: DicomStoreUnderTest) -> None:
    """Issue 11: the 724-byte RLE file claiming 60000 x 60000 pixels (pydicom would allocate 6.7 GiB)."""
    bomb_study = generate_uid()
    assert store.deposit("bomb/IM0", rle_bomb(study_uid=bomb_study, series_uid=generate_uid(),
                                              sop_uid=generate_uid()))
    studies, _ = store.source.index()
    (series,) = studies[bomb_study].series.values()

    with pytest.raises(InputLimitExceeded) as refused:
        store.source.read_instances(series)

    assert refused.value.limit == "max_pixels_per_frame" and refused.value.study_key == study_key(bomb_study)
    assert refused.value.series_uid == series.series_instance_uid and "60000 x 60000" in refused.value.reason
