"""DICOM fuzzing: mutated files pushed through index, classify and convert, each case in a child process
under a time and a memory limit, so a crash, a hang or a memory blow-up is seen rather than suffered.

Seeds are real series written by ``dicom_writer`` (one 3-slice MR series) and re-encoded in every transfer
syntax neuroflow may meet (explicit and implicit VR, deflate, RLE, JPEG-LS), plus one enhanced multi-frame
object. A case takes one seed and applies 1 to 3 mutations from a random generator seeded by (run seed,
case number), so a run is repeatable and any case can be regenerated alone: tags deleted or set to junk,
values given another VR, transfer syntax UIDs swapped (RLE, JPEG, JPEG 2000, JPEG-LS, deflate, unknown)
over pixel data that does not match them, pixel data truncated, padded or replaced, Rows, Columns,
NumberOfFrames and BitsAllocated set to huge or absurd values, functional-group and deeply nested sequences,
deflate bombs, and bytes flipped, inserted, cut or written over element lengths. The mutation goes into
every slice of the series, or into one slice only (the others stay clean).

Each case must end **accepted** (a volume came out) or **refused** with a reason: every file skipped by the
index with its reason, or a ``NeuroflowError`` (``StudyError`` names the study and what is wrong). Anything
else is a **finding**: another exception type escaping (``exception``), ``MemoryError`` under the memory
limit (``memory``), no answer within the time limit (``hang``), or a child that died (``crash``).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import random
import re
import resource
import select
import shutil
import struct
import subprocess
import sys
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import dcmwrite, write_dataset, write_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

SLICES = 3
SEED_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
                 JPEGLSLossless)
SWAP_SYNTAXES = (*SEED_SYNTAXES, ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
                 JPEG2000Lossless, UID("1.2.840.10008.1.2.4.201"), UID("1.2.3.4.5.6"), UID(""))
COMPRESSED = {RLELossless, JPEGLSLossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEG2000Lossless,
              UID("1.2.840.10008.1.2.4.201")}
ACCEPTED, REFUSED = "accepted", "refused"
FINDINGS = ("exception", "memory", "hang", "crash")


@dataclass(frozen=True)
class FuzzOptions:
    count: int = 10_000  # mutated files to generate (cases go on until this many)
    seed: int = 11
    timeout_s: float = 60.0  # one case in the child: index, classify, read and convert
    memory_mb: int = 1536  # the child's address-space limit (RLIMIT_AS)
    # The input limits the child runs with: a series may decode to this much, well inside memory_mb.
    max_series_bytes: int = 128 * 1024**2


@dataclass
class FuzzResult:
    cases: int = 0
    files: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)  # accepted, refused, or a finding kind
    refusal_classes: Counter[str] = field(default_factory=Counter)
    findings: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    peak_case: str = ""  # the case that raised the child's peak RSS last
    seconds: float = 0.0
    generator_errors: int = 0  # mutations the writer could not express (the case is written without them)

    @property
    def files_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0


# -- seeds ----------------------------------------------------------------------------------------------


def seed_series(work: Path) -> list[list[bytes]]:
    """Every seed: a list of Part-10 files (one series), bytes. Written once by ``dicom_writer``."""
    from neuroflow.core.roles import SeriesRole
    from neuroflow.core.volume import Geometry, Volume
    from neuroflow.devtools.dicom_writer import write_study

    rng = np.random.default_rng(0)
    array = (rng.normal(300.0, 80.0, size=(SLICES, 20, 24))).astype(np.int16)
    volume = Volume(array, Geometry(spacing=(1.0, 1.0, 2.0), origin=(-12.0, -10.0, 0.0),
                                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), size=(24, 20, SLICES)), {})
    written = write_study({SeriesRole.FLAIR: volume}, work / "seed", seed="neuroflow-fuzz")
    paths = written.series[SeriesRole.FLAIR].paths
    datasets: list[Dataset] = [pydicom.dcmread(p) for p in paths]
    seeds: list[list[bytes]] = []
    for syntax in SEED_SYNTAXES:
        files = []
        for ds in datasets:
            ds = copy.deepcopy(ds)
            if syntax in COMPRESSED:
                ds.compress(syntax, generate_instance_uid=False)  # the same seeds every run
            else:
                ds.file_meta.TransferSyntaxUID = syntax
            files.append(_to_bytes(ds))
        seeds.append(files)
    seeds.append([_to_bytes(_multiframe(datasets))])
    shutil.rmtree(work / "seed", ignore_errors=True)
    return seeds


def _multiframe(slices: list[Dataset]) -> Dataset:
    """The slices as one enhanced-style multi-frame object, positions in per-frame functional groups."""
    ds = copy.deepcopy(slices[0])
    ds.NumberOfFrames = len(slices)
    ds.PixelData = b"".join(s.PixelData for s in slices)
    shared = Dataset()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = ds.ImageOrientationPatient
    measures.PixelSpacing = ds.PixelSpacing
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for s in slices:
        position, frame = Dataset(), Dataset()
        position.ImagePositionPatient = s.ImagePositionPatient
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


# -- mutations ------------------------------------------------------------------------------------------

_IMPORTANT = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "BitsAllocated",
              "BitsStored", "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation", "PixelData",
              "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Modality", "SeriesDescription",
              "NumberOfFrames", "RescaleSlope", "RescaleIntercept", "ImageType", "EchoTime", "RepetitionTime",
              "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "InstanceNumber")
_JUNK_TEXT = ("", " ", "nan", "inf", "-inf", "1e400", "-1", "0", "abc", "\\\\\\", "1\\2\\3\\4\\5\\6\\7",
              "\x00\x01\x02", "\ufffd" * 3, "9" * 64, "A" * 70_000)


def _tag(keyword: str) -> int:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


def _junk_text(rng: random.Random) -> str:
    return rng.choice(_JUNK_TEXT) if rng.random() < 0.8 else rng.randbytes(rng.randrange(1, 40)).decode("latin-1")


def m_sizes(ds: Dataset, rng: random.Random) -> None:
    huge = (0, 1, 2, 255, 4096, 8192, 60000, 65535, rng.randrange(65536))
    ds.Rows, ds.Columns = rng.choice(huge), rng.choice(huge)


def m_frames(ds: Dataset, rng: random.Random) -> None:
    ds.NumberOfFrames = rng.choice(("0", "-1", "2", "3", "4", "abc", "", "999999999", "4097", "1e3", "3.5"))


def m_pixel_format(ds: Dataset, rng: random.Random) -> None:
    keyword = rng.choice(("BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel", "PixelRepresentation",
                          "PhotometricInterpretation", "PlanarConfiguration"))
    if keyword == "PhotometricInterpretation":
        ds.PhotometricInterpretation = rng.choice(("RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "",
                                                   "MONOCHROME1", "garbage"))
    else:
        setattr(ds, keyword, rng.choice((0, 1, 2, 3, 4, 7, 8, 12, 16, 32, 64, 65535)))


def m_transfer_syntax(ds: Dataset, rng: random.Random) -> None:
    syntax = rng.choice(SWAP_SYNTAXES)
    encapsulated = UID(ds.file_meta.get("TransferSyntaxUID", "")) in COMPRESSED
    ds.file_meta.TransferSyntaxUID = syntax
    if "PixelData" not in ds:
        return
    if syntax in COMPRESSED and not encapsulated:
        data = ds.PixelData if rng.random() < 0.5 else rng.randbytes(rng.randrange(0, 2048))
        ds.PixelData = encapsulate([data or b"\x00\x00"])
        ds["PixelData"].VR = "OB"


def m_pixel_data(ds: Dataset, rng: random.Random) -> None:
    if "PixelData" not in ds:
        ds.PixelData = rng.randbytes(64)
        return
    data: bytes = ds.PixelData
    choice = rng.randrange(6)
    if choice == 0:
        data = data[: rng.randrange(len(data) + 1)]
    elif choice == 1:
        data = data + rng.randbytes(rng.randrange(1, 4096))
    elif choice == 2:
        data = b""
    elif choice == 3:
        data = rng.randbytes(len(data))
    elif choice == 4 and len(data) > 16:  # encapsulated: the offset table or a fragment length
        start = rng.randrange(0, min(len(data) - 4, 32))
        data = data[:start] + struct.pack("<I", rng.choice((0, 0xFFFFFFFF, 0x7FFFFFFF, rng.randrange(2**32)))) \
            + data[start + 4:]
    else:
        data = data + b"\x00"  # odd length
    ds.PixelData = data


def m_delete(ds: Dataset, rng: random.Random) -> None:
    keyword = rng.choice(_IMPORTANT)
    if keyword in ds:
        delattr(ds, keyword)


def m_vr(ds: Dataset, rng: random.Random) -> None:
    keyword = rng.choice(_IMPORTANT[:18])
    tag = _tag(keyword)
    vr = rng.choice(("LO", "DS", "IS", "UN", "OB", "US", "UL", "FD", "SH", "CS"))
    value: Any
    if vr in ("US", "UL"):
        value = rng.randrange(65536)
    elif vr == "FD":
        value = rng.choice((float("nan"), float("inf"), -1.0, 1e300))
    elif vr in ("UN", "OB"):
        value = rng.randbytes(rng.randrange(0, 64))
    else:
        value = _junk_text(rng)[:64]
    ds[tag] = DataElement(tag, vr, value)


def m_geometry(ds: Dataset, rng: random.Random) -> None:
    keyword = rng.choice(("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleSlope",
                          "RescaleIntercept", "SliceThickness", "SpacingBetweenSlices"))
    values = rng.choice((["nan"] * 3, ["inf", "0", "0"], ["abc"], ["0"] * 6, ["1e308"] * 6, ["1", "0"],
                         ["-1", "-1"], ["0", "0", "0", "0", "0", "0"], ["1", "0", "0", "1", "0", "0"]))
    ds[keyword] = DataElement(_tag(keyword), "DS" if keyword != "RescaleSlope"
                              or rng.random() < 0.5 else "LO", values if len(values) > 1 else values[0])


def m_sequence(ds: Dataset, rng: random.Random) -> None:
    choice = rng.randrange(4)
    if choice == 0:  # per-frame groups that do not match the frames
        items = []
        for _ in range(rng.randrange(0, 6)):
            item = Dataset()
            if rng.random() < 0.5:
                position = Dataset()
                position.ImagePositionPatient = [_junk_text(rng)[:16] or "0", "0", str(rng.randrange(-5, 5))]
                item.PlanePositionSequence = Sequence([position] if rng.random() < 0.8 else [])
            items.append(item)
        ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    elif choice == 1:  # deeply nested
        inner = Dataset()
        inner.CodeMeaning = "deep"
        for _ in range(rng.randrange(2, 48)):  # deeper: pydicom's writer recurses past Python's limit
            outer = Dataset()
            outer.ReferencedImageSequence = Sequence([inner])
            inner = outer
        ds.ReferencedImageSequence = Sequence([inner])
    elif choice == 2:
        ds.SharedFunctionalGroupsSequence = Sequence([] if rng.random() < 0.5 else [Dataset()])
    else:
        agent = Dataset()
        agent.CodeMeaning = _junk_text(rng)[:64]
        ds.ContrastBolusAgentSequence = Sequence([agent] * rng.randrange(0, 3))


def m_text(ds: Dataset, rng: random.Random) -> None:
    keyword = rng.choice(("SeriesDescription", "ProtocolName", "SequenceName", "ImageType", "ScanningSequence",
                          "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "Manufacturer",
                          "SpecificCharacterSet", "AcquisitionTime", "ContrastBolusAgent", "DiffusionBValue"))
    tag = _tag(keyword)
    vr = pydicom.datadict.dictionary_VR(tag)
    if vr in ("FD", "FL", "US", "UL", "SS", "SL"):
        ds[tag] = DataElement(tag, "UN", rng.randbytes(rng.randrange(0, 12)))
    else:
        ds[tag] = DataElement(tag, vr, _junk_text(rng))


def m_private(ds: Dataset, rng: random.Random) -> None:
    ds.Manufacturer = rng.choice(("SIEMENS", "GE MEDICAL SYSTEMS", "Philips"))
    tag = rng.choice((0x0019100C, 0x00431039, 0x20011003))
    ds[tag] = DataElement(tag, rng.choice(("UN", "IS", "FL", "OB", "LO")) if rng.random() < 0.5 else "UN",
                          rng.randbytes(rng.randrange(0, 16)))


_DATASET_MUTATIONS: tuple[Callable[[Dataset, random.Random], None], ...] = (
    m_sizes, m_frames, m_pixel_format, m_transfer_syntax, m_pixel_data, m_delete, m_vr, m_geometry, m_sequence,
    m_text, m_private)


def b_truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(0, len(data))]


def b_flip(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = 0 if rng.random() < 0.1 else 132
    for _ in range(rng.randrange(1, 16)):
        out[rng.randrange(start, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def b_length(data: bytes, rng: random.Random) -> bytes:
    """Write over what is likely an element's length: 4 bytes after a tag of the body."""
    offset = rng.randrange(132, max(133, len(data) - 8)) & ~1
    value = rng.choice((0xFFFFFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0, 1, rng.randrange(2**32)))
    return data[:offset] + struct.pack("<I", value) + data[offset + 4:]


def b_insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(0, len(data))
    return data[:at] + rng.randbytes(rng.randrange(1, 512)) + data[at:]


_BYTE_MUTATIONS: tuple[Callable[[bytes, random.Random], bytes], ...] = (b_truncate, b_flip, b_length, b_insert)


def deflate_bomb(ds: Dataset, rng: random.Random) -> bytes:
    """A small deflated file whose dataset inflates to 64..512 MiB (a private OB element of zeros at the end)."""
    inflated = rng.choice((64, 128, 256, 512)) * 1024**2
    body = io.BytesIO()
    plain = copy.deepcopy(ds)
    plain.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "PixelData" in plain:
        del plain.PixelData
    body_fp = pydicom.filebase.DicomBytesIO()
    body_fp.is_little_endian, body_fp.is_implicit_VR = True, False
    write_dataset(body_fp, plain)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [compressor.compress(body_fp.getvalue()),
              compressor.compress(struct.pack("<HH", 0x7FE1, 0x1010) + b"OB\x00\x00" + struct.pack("<I", inflated))]
    zeros = bytes(1024**2)
    for _ in range(inflated // len(zeros)):
        chunks.append(compressor.compress(zeros))
    chunks.append(compressor.flush())
    meta = FileMetaDataset(ds.file_meta)
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    head = pydicom.filebase.DicomBytesIO()
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    body.write(head.getvalue())
    for chunk in chunks:
        body.write(chunk)
    return body.getvalue()


def rle_bomb(rows: int = 60000, columns: int = 60000, *, study_uid: str = "1.2.826.0.1.3680043.10.1",
             series_uid: str = "1.2.826.0.1.3680043.10.1.1", sop_uid: str = "1.2.826.0.1.3680043.10.1.1.1") -> bytes:
    """The input of issue 11: a 724-byte RLE Lossless MR file whose header claims ``rows`` x ``columns``
    16-bit pixels (60000 x 60000 by default: pydicom would allocate 6.7 GiB to decode its one tiny segment)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientID, ds.SeriesDescription = "MR", "NF-FUZZ-0001", "AX FLAIR"
    ds.AccessionNumber, ds.InstanceNumber = "", "1"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    segment = bytes([0x81, 0x00]) * 4  # "repeat 0x00 128 times", a few times over
    rle_header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([rle_header + segment + segment])
    ds["PixelData"].VR = "OB"
    return _to_bytes(ds)


@contextlib.contextmanager
def _lenient_pydicom() -> Iterator[None]:
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


@dataclass
class Case:
    number: int
    files: list[bytes]
    mutated: int  # how many of the files carry the mutation
    description: str


def make_case(seeds: list[list[bytes]], run_seed: int, number: int) -> tuple[Case, int]:
    """Case ``number`` of the run (the same for the same seeds, run seed and number), and how many of its
    mutations the writer could not express."""
    rng = random.Random(f"{run_seed}:{number}")
    seed_files = rng.choice(seeds)
    all_slices = len(seed_files) == 1 or rng.random() < 0.7
    targets = range(len(seed_files)) if all_slices else [rng.randrange(len(seed_files))]
    plan_seed = rng.randrange(2**32)
    kinds: list[str] = []
    dataset_steps = [rng.choice(_DATASET_MUTATIONS) for _ in range(rng.randrange(0, 3))]
    byte_steps = [rng.choice(_BYTE_MUTATIONS) for _ in range(rng.randrange(0 if dataset_steps else 1, 2))]
    bomb = rng.random() < 0.005
    errors = 0
    files = list(seed_files)
    for index in targets:
        step_rng = random.Random(plan_seed)  # the same choices in every slice of the series
        ds = pydicom.dcmread(io.BytesIO(seed_files[index]))
        if bomb:
            files[index] = deflate_bomb(ds, step_rng)
            kinds = ["deflate_bomb"]
            continue
        data = seed_files[index]
        for step in dataset_steps:
            try:
                with _lenient_pydicom():  # junk must get into the file: pydicom would validate it away
                    step(ds, step_rng)
                    data = _to_bytes(ds)
            except Exception:  # a value the writer cannot express: the case goes on without this step
                ds, errors = pydicom.dcmread(io.BytesIO(data)), errors + 1
                continue
            kinds.append(step.__name__)
        for byte_step in byte_steps:
            data = byte_step(data, step_rng)
            kinds.append(byte_step.__name__)
        files[index] = data
    described = ",".join(dict.fromkeys(kinds)) or "none"
    return Case(number, files, len(targets), f"{described} on {len(targets)}/{len(files)} slice(s)"), errors


# -- the child: one case at a time ----------------------------------------------------------------------


def run_case(folder: Path, limits: Any) -> dict[str, Any]:
    """Index, classify and convert the case in ``folder``: {"outcome", "reason"} (and "error" for findings)."""
    from neuroflow.core.dicom_io import FolderDicomSource, study_key
    from neuroflow.core.errors import NeuroflowError
    from neuroflow.core.input_limits import check_study_size
    from neuroflow.core.series_volume import series_to_volume
    from neuroflow.ingest.classify import classify_study

    try:
        source = FolderDicomSource(folder, limits=limits)
        studies, skipped = source.index()
        if not studies:
            reasons = sorted({"deflated, inflates over the limit" if "inflates to more than" in s.reason
                              else s.reason.split(":")[0] for s in skipped})
            return {"outcome": REFUSED, "reason": f"index: {'; '.join(reasons) or 'no files'}"}
        for uid, study in studies.items():
            key = study_key(uid)
            check_study_size(key, sum(len(s.headers) for s in study.series.values()), limits, stage="read")
            classify_study(list(study.series.values()))
            for series in study.series.values():
                series_to_volume(source.read_instances(series), study_key=key)
        return {"outcome": ACCEPTED, "reason": ""}
    except MemoryError as exc:
        return {"outcome": "memory", "reason": "MemoryError", "error": _trace(exc)}
    except NeuroflowError as exc:
        return {"outcome": REFUSED, "reason": refusal_class(exc), "message": str(exc)[:300]}
    except RecursionError as exc:
        return {"outcome": "exception", "reason": "RecursionError", "error": _trace(exc)}
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust decoder's panic is a BaseException
        return {"outcome": "exception", "reason": type(exc).__name__, "error": _trace(exc)}


_REFUSAL_CLASSES = (
    ("limit", re.compile(r"over the limit")),
    ("unreadable file", re.compile(r"unreadable DICOM")),
    ("pixel data unreadable", re.compile(r"pixel data|no pixel data")),
    ("too few slices", re.compile(r"fewer than \d+ slices")),
    ("geometry", re.compile(r"ImagePositionPatient|ImageOrientationPatient|PixelSpacing|positions|gap|sheared"
                            r"|slice|orientation", re.I)),
    ("image format", re.compile(r"colour|Rows|Columns|frames|SamplesPerPixel|BitsAllocated|header", re.I)),
    ("series identity", re.compile(r"different series")),
)


def refusal_class(exc: BaseException) -> str:
    """A short, bounded class of a refusal, for the summary."""
    from neuroflow.core.errors import InputLimitExceeded

    if isinstance(exc, InputLimitExceeded):
        return f"limit: {exc.limit}"
    text = getattr(exc, "reason", str(exc))
    for name, pattern in _REFUSAL_CLASSES:
        if pattern.search(text):
            return name
    return f"other ({type(exc).__name__})"


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc, limit=-6))[-1500:]


def peak_rss_mb() -> float:
    """This process's own peak resident set (VmHWM). Not ru_maxrss: Linux carries that across fork and exec, so
    a child of a large parent (a long test session) would report the parent's peak as its own."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(memory_mb: int, max_series_bytes: int) -> None:
    """The child's loop: a case folder per stdin line, a JSON answer per stdout line."""
    from neuroflow.core.config import InputLimitSettings

    limits = InputLimitSettings(max_series_bytes=max_series_bytes)
    run_case(Path(os.devnull), limits)  # import everything before the limit is set
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 1024**2, memory_mb * 1024**2))
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but answers on the pipe
    for line in sys.stdin:
        answer = run_case(Path(line.strip()), limits)
        answer["rss_mb"] = peak_rss_mb()
        out.write(json.dumps(answer) + "\n")
        out.flush()


# -- the parent -----------------------------------------------------------------------------------------


class _Child:
    def __init__(self, options: FuzzOptions) -> None:
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "neuroflow.devtools.dicom_fuzz", "--child", str(options.memory_mb),
             str(options.max_series_bytes)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)

    def ask(self, folder: Path, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(f"{folder}\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            return self._died()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            self.stop()
            return {"outcome": "hang", "reason": f"no answer in {timeout_s:.0f} s"}
        line = self.process.stdout.readline()
        if not line:
            return self._died()
        answer: dict[str, Any] = json.loads(line)
        return answer

    def _died(self) -> dict[str, Any]:
        code = self.process.wait()
        return {"outcome": "crash", "reason": f"child exited with {code}"}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def fuzz(options: FuzzOptions, work: Path, progress: Callable[[str], None] | None = None) -> FuzzResult:
    """Generate cases until ``options.count`` mutated files, push each through the child, tally."""
    work.mkdir(parents=True, exist_ok=True)
    seeds = seed_series(work)
    result = FuzzResult()
    child = _Child(options)
    started = time.perf_counter()
    try:
        while result.files < options.count:
            case, errors = make_case(seeds, options.seed, result.cases)
            result.generator_errors += errors
            folder = work / "case"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            for index, data in enumerate(case.files):
                (folder / f"IM{index}").write_bytes(data)
            answer = child.ask(folder, options.timeout_s)
            if answer["outcome"] in ("hang", "crash"):
                child = _Child(options)
            result.cases += 1
            result.files += case.mutated
            result.outcomes[answer["outcome"]] += 1
            if float(answer.get("rss_mb", 0.0)) > result.peak_rss_mb:
                result.peak_rss_mb = float(answer["rss_mb"])
                result.peak_case = f"case {case.number} ({case.description})"
            if answer["outcome"] == REFUSED:
                result.refusal_classes[answer["reason"]] += 1
            elif answer["outcome"] != ACCEPTED:
                result.findings.append({"case": case.number, "mutations": case.description, **answer})
                if progress is not None:
                    progress(f"finding: {json.dumps(result.findings[-1])}")
            if progress is not None and result.cases % 500 == 0:
                progress(f"{result.cases} cases, {result.files} files, {dict(result.outcomes)}")
    finally:
        child.stop()
        shutil.rmtree(work / "case", ignore_errors=True)
    result.seconds = time.perf_counter() - started
    return result


def regenerate(options: FuzzOptions, number: int, out: Path, work: Path) -> str:
    """Write case ``number`` of the run to ``out`` (to reproduce a finding); returns its description."""
    case, _ = make_case(seed_series(work), options.seed, number)
    out.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(case.files):
        (out / f"IM{index}").write_bytes(data)
    return case.description


def markdown_section(options: FuzzOptions, result: FuzzResult) -> str:
    """The BENCHMARKS.md section of a run."""
    findings = sum(result.outcomes[k] for k in FINDINGS)
    refused = ", ".join(f"{name} {n}" for name, n in result.refusal_classes.most_common())
    lines = [
        "## DICOM fuzzing (`make fuzz`)",
        "",
        f"{result.files} mutated DICOM files in {result.cases} cases (a case is one series: the mutation in all "
        f"{SLICES} slices, or in one; the enhanced multi-frame seed is one file), seed {options.seed}, through "
        "index, classify, read and convert (`services/neuroflow/devtools/dicom_fuzz.py`), each case in a child "
        f"process limited to {options.memory_mb} MiB of address space and {options.timeout_s:.0f} s, input limits "
        f"at their defaults but max_series_bytes {options.max_series_bytes // 1024**2} MiB.",
        "",
        "| files | cases | accepted | refused | crashes | hangs | memory | other exceptions | peak RSS | files/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {result.files} | {result.cases} | {result.outcomes[ACCEPTED]} | {result.outcomes[REFUSED]} | "
        f"{result.outcomes['crash']} | {result.outcomes['hang']} | {result.outcomes['memory']} | "
        f"{result.outcomes['exception']} | {result.peak_rss_mb:.0f} MiB | {result.files_per_s:.1f} |",
        "",
        f"Refused, by reason class: {refused or 'none'}.",
        "",
        f"Findings (crash, hang, memory, other exception): {findings}. The peak RSS was reached in "
        f"{result.peak_case or 'no case'}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "--child":
    child_main(int(sys.argv[2]), int(sys.argv[3]))
