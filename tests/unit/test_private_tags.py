"""Vendor private tags (diffusion b-values) are read through their private creator block: found where
the block was reserved (not only at the usual (gggg,10xx)), and not read when the creator is missing or
is someone else's, even at the usual element number. Files written and read back, implicit VR included
(values arrive as bytes without a dictionary), as scanners and PACS store them."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage, generate_uid

from neuroflow.core.private_tags import GE_B_VALUE, PHILIPS_B_VALUE, SIEMENS_B_VALUE, PrivateBlocks, PrivateTag
from neuroflow.ingest.header_facts import read_facts


def _header(manufacturer: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Manufacturer = manufacturer
    ds.Modality = "MR"
    ds.SeriesDescription = "ep2d_diff"
    return ds


def _with_block(ds: Dataset, tag: PrivateTag, value: object, vr: str, *, slot: int = 0x10,
                creator: str | None = None) -> Dataset:
    """``ds`` with ``creator`` (default: the tag's own) reserving block ``slot`` of the tag's group."""
    ds.add_new((tag.group << 16) | slot, "LO", creator or tag.creator)
    ds.add_new((tag.group << 16) | (slot << 8) | tag.element, vr, value)
    return ds


def _round_trip(ds: Dataset, tmp_path: Path, syntax: UID) -> Dataset:
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "slice.dcm"
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path, stop_before_pixels=True)


SYNTAXES = [pytest.param(ExplicitVRLittleEndian, id="explicit"), pytest.param(ImplicitVRLittleEndian, id="implicit")]


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize(("manufacturer", "tag", "value", "vr", "expected"), [
    ("SIEMENS", SIEMENS_B_VALUE, "1000", "IS", 1000.0),
    ("GE MEDICAL SYSTEMS", GE_B_VALUE, ["1000000500", "8", "0", "0"], "IS", 500.0),
    ("Philips Medical Systems", PHILIPS_B_VALUE, 800.0, "FL", 800.0),
])
def test_b_value_is_read_in_the_usual_block(manufacturer: str, tag: PrivateTag, value: object, vr: str,
                                             expected: float, syntax: UID, tmp_path: Path) -> None:
    ds = _round_trip(_with_block(_header(manufacturer), tag, value, vr), tmp_path, syntax)
    assert read_facts(ds, 1).b_values == (expected,)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_b_value_is_found_in_a_shifted_block(syntax: UID, tmp_path: Path) -> None:
    """Siemens' creator at (0019,0011): the b-value is (0019,110C), and (0019,100C) belongs to another."""
    ds = _header("SIEMENS")
    ds.add_new(0x00190010, "LO", "SIEMENS CT VA0  COAD")
    ds.add_new(0x0019100C, "IS", "7")  # another creator's element at the usual number
    _with_block(ds, SIEMENS_B_VALUE, "1500", "IS", slot=0x11)
    assert read_facts(_round_trip(ds, tmp_path, syntax), 1).b_values == (1500.0,)


@pytest.mark.parametrize("syntax", SYNTAXES)
def test_b_value_under_another_creator_is_not_read(syntax: UID, tmp_path: Path) -> None:
    ds = _with_block(_header("SIEMENS"), SIEMENS_B_VALUE, "1000", "IS", creator="ACME PRIVATE 1")
    assert read_facts(_round_trip(ds, tmp_path, syntax), 1).b_values == ()


def test_b_value_without_a_creator_is_not_read(tmp_path: Path) -> None:
    ds = _header("SIEMENS")
    ds.add_new(0x0019100C, "IS", "1000")  # the usual number, but no block reserved: nobody's element
    assert read_facts(_round_trip(ds, tmp_path, ExplicitVRLittleEndian), 1).b_values == ()


def test_a_creator_that_reserved_two_blocks_is_read_in_its_first() -> None:
    """The first block a creator reserved is its block, whatever order the elements were added in (a dataset
    built in memory keeps insertion order; a file read back is sorted)."""
    ds = _header("SIEMENS")
    _with_block(ds, SIEMENS_B_VALUE, "2000", "IS", slot=0x12)
    _with_block(ds, SIEMENS_B_VALUE, "1000", "IS", slot=0x11)
    assert SIEMENS_B_VALUE.value(ds) == 1000


def test_one_scan_reads_values_of_several_blocks_and_groups() -> None:
    ds = _header("SIEMENS")
    _with_block(ds, SIEMENS_B_VALUE, "1000", "IS", slot=0x10)
    ds.add_new(0x00190011, "LO", "SIEMENS CSA HEADER")
    ds.add_new(0x0019110E, "FD", [0.0, 0.6, 0.8])  # a value in a second creator's block
    _with_block(ds, GE_B_VALUE, ["1000000500", "8", "0", "0"], "IS", slot=0x13)
    blocks = PrivateBlocks(ds)
    assert blocks.numbers(0x0019, ("SIEMENS MR HEADER",), 0x0C) == [1000.0]
    assert blocks.numbers(0x0019, ("SIEMENS MR HEADER", "SIEMENS CSA HEADER"), 0x0E) == [0.0, 0.6, 0.8]
    assert blocks.numbers(0x0043, ("GEMS_PARM_01",), 0x39) == [1000000500.0, 8.0, 0.0, 0.0]
    assert blocks.value(0x0043, ("GEMS_PARM_01",), 0x3A) is None  # the block is there, the element is not
