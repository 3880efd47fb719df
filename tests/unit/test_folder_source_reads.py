"""The folder source reads each file's header once: the index parses up to the pixel data and remembers where it
ended, and ``read_instances`` reads only the rest of a file that has not changed since. What it hands on must be
what a full ``pydicom.dcmread`` gives, in every encoding (explicit and implicit VR, encapsulated pixel data,
elements after the pixels), a deflated file (which pydicom inflates whole) is read in full, and a file replaced
after indexing is read again, never stitched from two versions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from neuroflow.core import dicom_io
from neuroflow.core.dicom_io import FolderDicomSource, SeriesInstances
from neuroflow.core.errors import InputLimitExceeded
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import load_volume, write_study

GLIOMA_T1C = Path(__file__).resolve().parents[1] / "data" / "glioma-tcga-du-7294" / "t1c_bet.nii.gz"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four slices of a real T1 post-contrast, one file per slice, explicit VR little endian."""
    full = load_volume(GLIOMA_T1C)
    small = Volume.from_sitk(full.to_sitk()[90:154, 100:164, 75:79])
    folder = tmp_path_factory.mktemp("written")
    write_study({SeriesRole.T1CE: small}, folder)
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _encoded(files: list[Path], folder: Path, encoding: str) -> Path:
    """The files re-encoded, each slice in another way so one series mixes them."""
    folder.mkdir()
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        out = folder / f"{n}.dcm"
        if encoding == "implicit":
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
            ds.save_as(out, implicit_vr=True, little_endian=True)
        elif encoding == "deflated":
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            ds.save_as(out)
        elif encoding == "rle":
            ds.compress(RLELossless)
            ds.save_as(out)
        elif encoding == "trailing":  # an element after the pixels: (FFFC,FFFC) padding
            ds.DataSetTrailingPadding = b"\0" * 16
            ds.save_as(out)
        else:
            raise ValueError(encoding)
    return folder


def _series(source: FolderDicomSource) -> SeriesInstances:
    studies, skipped = source.index()
    assert skipped == []
    (study,) = studies.values()
    (series,) = study.series.values()
    return series


def _indexed_copy(written: list[Path], tmp_path: Path) -> tuple[FolderDicomSource, SeriesInstances]:
    """A copy of the written series (its files may then be changed) and its index."""
    folder = tmp_path / "series"
    shutil.copytree(written[0].parent, folder)
    source = FolderDicomSource(folder)
    return source, _series(source)


def _full_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every whole-file parse (pydicom.dcmread without stop_before_pixels) the source makes."""
    calls: list[str] = []
    real = pydicom.dcmread

    def counting(fp: object, *args: object, **kwargs: object) -> pydicom.Dataset:
        if not kwargs.get("stop_before_pixels"):
            calls.append(str(getattr(fp, "name", fp)))
        return real(fp, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom_io.pydicom, "dcmread", counting)
    return calls


@pytest.mark.parametrize("encoding", ["implicit", "rle", "trailing", "deflated"])
def test_what_is_read_is_what_a_full_read_gives(written: list[Path], tmp_path: Path, encoding: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _encoded(written, tmp_path / encoding, encoding)
    source = FolderDicomSource(folder)
    series = _series(source)
    full_reads = _full_reads(monkeypatch)
    datasets = source.read_instances(series)
    # Deflated files are inflated whole by pydicom, so they are parsed again; every other file is not.
    assert len(full_reads) == (len(written) if encoding == "deflated" else 0), full_reads
    for ds, path, header in zip(datasets, series.paths, series.headers, strict=True):
        reference = pydicom.dcmread(path)
        assert ds.filename == path and ds.file_meta.TransferSyntaxUID == reference.file_meta.TransferSyntaxUID
        assert ds.original_encoding == reference.original_encoding
        assert [e.tag for e in ds] == [e.tag for e in reference]
        assert all(ds[e.tag].value == e.value for e in reference), path
        assert np.array_equal(ds.pixel_array, reference.pixel_array)
        assert "PixelData" not in header  # the index keeps headers only


def test_a_file_replaced_after_indexing_is_read_again_in_full(written: list[Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    source, series = _indexed_copy(written, tmp_path)
    changed = series.paths[1]
    ds = pydicom.dcmread(changed)
    pixels = ds.pixel_array.copy()
    pixels[0, :8] = 1234  # same size, other pixels: only the stat tells the file changed
    ds.PixelData = pixels.tobytes()
    ds.save_as(changed + ".new")
    os.replace(changed + ".new", changed)
    stat = os.stat(changed)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    full_reads = _full_reads(monkeypatch)
    datasets = source.read_instances(series)
    assert full_reads == [changed]
    assert np.array_equal(datasets[1].pixel_array, pixels)


def test_a_file_replaced_after_indexing_is_checked_against_the_limits_again(written: list[Path], tmp_path: Path,
                                                                           ) -> None:
    # The index checked the headers it read; a file read again in full may now claim another size.
    source, series = _indexed_copy(written, tmp_path)
    changed = series.paths[2]
    ds = pydicom.dcmread(changed)
    ds.Rows = ds.Columns = 60000  # the pixel data stays small: only the header's claim changes
    ds.save_as(changed)
    with pytest.raises(InputLimitExceeded) as refused:
        source.read_instances(series)
    assert changed in str(refused.value)
