"""Non-image objects as scanners and PACS put them beside images, made from one of our written slices
(same patient, study and, where the vendor does so, series): a Philips Raw Data Storage object under the
image series' UID, a grayscale presentation state, a key object selection, a basic text SR and an
encapsulated PDF each in a series of its own, and a neuroflow secondary capture coming back from the PACS."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    EncapsulatedPDFStorage,
    GrayscaleSoftcopyPresentationStateStorage,
    KeyObjectSelectionDocumentStorage,
    RawDataStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from neuroflow.core.identity import NEUROFLOW_MANUFACTURER

_IMAGE_ONLY = ("Rows", "Columns", "PixelData", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
               "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing", "ImagePositionPatient",
               "ImageOrientationPatient", "SliceLocation", "RescaleSlope", "RescaleIntercept", "WindowCenter",
               "WindowWidth", "SliceThickness", "SpacingBetweenSlices")

NON_IMAGE_CLASSES: dict[str, UID] = {
    "presentation state": GrayscaleSoftcopyPresentationStateStorage,
    "key object selection": KeyObjectSelectionDocumentStorage,
    "structured report": BasicTextSRStorage,
    "encapsulated PDF": EncapsulatedPDFStorage,
}


def write_raw_data(image_slice: Path, out: Path) -> Path:
    """A Philips-style Raw Data Storage object in the same series as ``image_slice``: no pixel matrix,
    the scanner's raw blob in a private block."""
    ds = _derived(image_slice, RawDataStorage, keep_series=True)
    ds.Manufacturer = "Philips Medical Systems"
    block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
    block.add_new(0x70, "OB", bytes(256))  # stands in for the raw spectra/k-space bytes Philips stores
    return _save(ds, out)


def write_non_image(image_slice: Path, out: Path, kind: str, *, series_number: int) -> Path:
    """One object of ``kind`` (a key of NON_IMAGE_CLASSES) in a series of its own."""
    ds = _derived(image_slice, NON_IMAGE_CLASSES[kind], keep_series=False)
    ds.SeriesNumber = series_number
    ds.SeriesDescription = kind
    ds.Modality = {"presentation state": "PR", "encapsulated PDF": "DOC"}.get(kind, "SR")
    if kind == "encapsulated PDF":
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    return _save(ds, out)


def write_our_secondary_capture(image_slice: Path, out: Path, *, series_number: int) -> Path:
    """A neuroflow overlay screenshot (secondary capture, with pixels) as it comes back from the PACS."""
    source = pydicom.dcmread(image_slice)
    ds = _derived(image_slice, SecondaryCaptureImageStorage, keep_series=False)
    ds.Manufacturer = NEUROFLOW_MANUFACTURER
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "neuroflow overlay"
    ds.Modality = "OT"
    ds.Rows, ds.Columns = source.Rows, source.Columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.add_new(0x7FE00010, "OB", np.zeros((source.Rows, source.Columns), dtype=np.uint8).tobytes())
    return _save(ds, out)


def _derived(image_slice: Path, sop_class: UID, *, keep_series: bool) -> Dataset:
    ds = copy.deepcopy(pydicom.dcmread(image_slice))
    for keyword in _IMAGE_ONLY:
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if not keep_series:
        ds.SeriesInstanceUID = generate_uid()
    ds.InstanceNumber = 1
    return ds


def _save(ds: Dataset, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out
