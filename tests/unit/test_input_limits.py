"""Issue 11, defect 8: input limits are checked from the headers before any pixel data is decoded, each limit
is a setting, and over a limit a series (or study) is refused as bad input naming the study's key, the series
and the limit. The same checks on a real Orthanc: tests/contract/test_dicom_store_contract.py."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGLSLossless

from neuroflow.core.config import InputLimitSettings, NeuroflowSettings
from neuroflow.core.dicom_io import FolderDicomSource, SeriesInstances, find_series, study_key
from neuroflow.core.errors import InputLimitExceeded, SeriesRejected
from neuroflow.core.roles import SeriesRole
from neuroflow.core.series_volume import series_to_volume
from neuroflow.core.volume import Geometry, Volume
from neuroflow.core.worker import failure_reason
from neuroflow.devtools.dicom_fuzz import deflate_bomb, rle_bomb
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.proto.neuroflow.v1 import common_pb2

ROWS, COLUMNS, SLICES = 20, 24, 3
SERIES_BYTES = ROWS * COLUMNS * 2 * SLICES  # int16


def _small_series(folder: Path, seed: str = "limits") -> tuple[str, list[Path]]:
    array = np.arange(SLICES * ROWS * COLUMNS, dtype=np.int16).reshape(SLICES, ROWS, COLUMNS)
    volume = Volume(array, Geometry(spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                                    direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), size=(COLUMNS, ROWS, SLICES)), {})
    written = write_study({SeriesRole.FLAIR: volume}, folder, seed=seed)
    return written.study_instance_uid, written.series[SeriesRole.FLAIR].paths


def _only_series(source: FolderDicomSource) -> SeriesInstances:
    studies, _ = source.index()
    (study,) = studies.values()
    (series,) = study.series.values()
    return series


def test_the_724_byte_rle_file_claiming_60000x60000_pixels_is_refused_from_its_header_without_allocating(
        tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    bomb = tmp_path / "in" / "IM0"
    bomb.write_bytes(rle_bomb())
    assert bomb.stat().st_size == 724
    # Under a 1 GiB address-space limit: the refusal must come from the header, and decoding the same file
    # under the same limit must fail to allocate (so the refusal really came first).
    script = textwrap.dedent(f"""
        import json, resource, pydicom
        from pathlib import Path
        from neuroflow.core.config import NeuroflowSettings
        from neuroflow.core.dicom_io import FolderDicomSource
        from neuroflow.core.errors import InputLimitExceeded
        from neuroflow.core.site_secret import install_site_secret
        install_site_secret(NeuroflowSettings(), distributed=False)  # as every entry point does: the test's keys
        source = FolderDicomSource(Path({str(tmp_path / "in")!r}))
        studies, _ = source.index()
        (study,) = studies.values()
        (series,) = study.series.values()
        resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))
        out = {{}}
        try:
            source.read_instances(series)
        except InputLimitExceeded as exc:
            out["refused"], out["limit"] = str(exc), exc.limit
        try:
            pydicom.dcmread({str(bomb)!r}).pixel_array
        except MemoryError:
            out["decoding"] = "MemoryError"
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["limit"] == "max_pixels_per_frame"
    assert study_key("1.2.826.0.1.3680043.10.1") in out["refused"]
    assert "60000 x 60000" in out["refused"] and "NEUROFLOW_LIMITS__MAX_PIXELS_PER_FRAME" in out["refused"]
    assert out["decoding"] == "MemoryError"


@pytest.mark.parametrize(("setting", "refused_at", "accepted_at"), [
    ("max_pixels_per_frame", ROWS * COLUMNS - 1, ROWS * COLUMNS),
    ("max_series_bytes", SERIES_BYTES - 1, SERIES_BYTES),
])
def test_each_series_limit_is_a_setting_refused_one_below_and_accepted_at_it(
        tmp_path: Path, setting: str, refused_at: int, accepted_at: int) -> None:
    study_uid, _ = _small_series(tmp_path / "in")

    def read(limit: int) -> list[pydicom.Dataset]:
        source = FolderDicomSource(tmp_path / "in", limits=InputLimitSettings(**{setting: limit}))
        return source.read_instances(_only_series(source))

    with pytest.raises(InputLimitExceeded) as refused:
        read(refused_at)
    assert refused.value.limit == setting and refused.value.study_key == study_key(study_uid)
    assert refused.value.series_uid and f"NEUROFLOW_LIMITS__{setting.upper()}" in str(refused.value)
    assert len(read(accepted_at)) == SLICES


def test_the_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROFLOW_LIMITS__MAX_FRAMES_PER_INSTANCE", "7")
    monkeypatch.setenv("NEUROFLOW_LIMITS__MAX_INSTANCES_PER_STUDY", "9")
    limits = NeuroflowSettings().limits
    assert (limits.max_frames_per_instance, limits.max_instances_per_study) == (7, 9)


def test_frames_per_instance_over_the_limit_are_refused_from_the_header(tmp_path: Path) -> None:
    _, paths = _small_series(tmp_path / "in")
    ds = pydicom.dcmread(paths[0])
    ds.NumberOfFrames = 5000  # a multi-frame header over the default limit of 4096
    ds.save_as(paths[0])
    source = FolderDicomSource(tmp_path / "in")
    with pytest.raises(InputLimitExceeded) as refused:
        source.read_instances(_only_series(source))
    assert refused.value.limit == "max_frames_per_instance" and "5000 frames" in refused.value.reason


def test_a_study_over_the_instance_limit_is_refused_before_its_series_are_looked_up(tmp_path: Path) -> None:
    study_uid, _ = _small_series(tmp_path / "in")
    source = FolderDicomSource(tmp_path / "in", limits=InputLimitSettings(max_instances_per_study=SLICES - 1))
    series = _only_series(source)
    ref = common_pb2.StudyRef(study_instance_uid=study_uid, study_key=study_key(study_uid))
    with pytest.raises(InputLimitExceeded) as refused:
        find_series(source, ref, [common_pb2.SeriesRef(series_instance_uid=series.series_instance_uid,
                                                       role="FLAIR")], stage="preprocess")
    assert refused.value.limit == "max_instances_per_study" and f"{SLICES} instances" in refused.value.reason


def test_a_worker_reports_an_over_limit_series_as_bad_input_never_retried() -> None:
    reason = failure_reason(InputLimitExceeded("abc123", "too big", limit="max_series_bytes", series_uid="1.2"),
                            study_key="abc123", stage="preprocess")
    assert reason.code == common_pb2.FailureReason.SERIES_REJECTED and not reason.retryable
    assert "abc123" in reason.message and reason.series_instance_uid == "1.2"


def test_a_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path: Path) -> None:
    _, paths = _small_series(tmp_path / "in")
    import random
    paths[0].write_bytes(deflate_bomb(pydicom.dcmread(paths[0]), random.Random(1)))  # inflates to >= 64 MiB
    assert paths[0].stat().st_size < 1024**2
    limits = InputLimitSettings(max_series_bytes=16 * 1024**2)
    studies, skipped = FolderDicomSource(tmp_path / "in", limits=limits).index()
    assert [s.path for s in skipped] == [str(paths[0])]
    assert "inflates to more than" in skipped[0].reason
    # A deflated file within the limits still reads.
    small = pydicom.dcmread(paths[1])
    small.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    small.save_as(paths[1], enforce_file_format=True)
    assert zlib and len(FolderDicomSource(tmp_path / "in", limits=limits).read_instances(
        next(iter(next(iter(studies.values())).series.values())))) == SLICES - 1


@pytest.mark.parametrize("syntax", [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian, pydicom.uid.RLELossless])
def test_the_transfer_syntax_read_from_the_bytes_is_the_one_pydicom_reads(tmp_path: Path, syntax: str) -> None:
    """dataset_bytes tells a deflated file from the others from the meta group's bytes (pydicom's parse of it
    costs more than the check is worth on every file); where it reads one, it is pydicom's."""
    from neuroflow.core.input_limits import _meta_transfer_syntax

    _, paths = _small_series(tmp_path / "in")
    ds = pydicom.dcmread(paths[0])
    if syntax == pydicom.uid.RLELossless:
        ds.compress(syntax, encoding_plugin="pydicom")
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    assert _meta_transfer_syntax(buffer) == pydicom.dcmread(io.BytesIO(buffer.getvalue())).file_meta.TransferSyntaxUID


def test_a_meta_group_that_understates_its_length_still_shows_a_deflated_file(tmp_path: Path) -> None:
    """The group length is not trusted: pydicom reads the meta elements while their group is 0002, and so does the
    check, so a file cannot hide its deflated syntax (and a bomb) behind a short group length."""
    from neuroflow.core.input_limits import _meta_transfer_syntax, dataset_bytes

    _, paths = _small_series(tmp_path / "in")
    import random
    data = bytearray(deflate_bomb(pydicom.dcmread(paths[0]), random.Random(1)))
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    data[140:144] = (8).to_bytes(4, "little")  # the group length now ends the group after its first element
    assert _meta_transfer_syntax(io.BytesIO(bytes(data))) == DeflatedExplicitVRLittleEndian
    nbytes, deflated = dataset_bytes(io.BytesIO(bytes(data)), 16 * 1024**2)
    assert deflated and nbytes > 16 * 1024**2
    # Bytes that do not read as an explicit-VR meta group are left to pydicom's parse.
    assert _meta_transfer_syntax(io.BytesIO(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00\x1a\x00\x00\x00")) is None
    assert _meta_transfer_syntax(io.BytesIO(b"not dicom")) is None


def test_a_jpeg_ls_frame_whose_codestream_disagrees_with_rows_and_columns_is_refused_before_decoding(
        tmp_path: Path) -> None:
    """GDCM aborted the whole process (SIGABRT) decoding such a frame: found by the fuzzer."""
    _, paths = _small_series(tmp_path / "in")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(JPEGLSLossless)
        ds.Rows, ds.Columns = 1, ROWS * COLUMNS  # same pixel count, other shape than the codestream's
        ds.save_as(path)
    source = FolderDicomSource(tmp_path / "in")
    with pytest.raises(SeriesRejected) as refused:
        source.read_instances(_only_series(source))
    assert f"codestream is {ROWS} x {COLUMNS} pixels, the header says 1 x {ROWS * COLUMNS}" in refused.value.reason


def test_an_unreadable_header_value_is_refused_naming_the_file(tmp_path: Path) -> None:
    study_uid, paths = _small_series(tmp_path / "in")
    datasets = [pydicom.dcmread(p) for p in paths]
    broken = copy.deepcopy(datasets[1])
    broken.RescaleIntercept = pydicom.multival.MultiValue(str, ["1", "2"])  # one value expected
    with pytest.raises(SeriesRejected) as refused:
        series_to_volume([datasets[0], broken, datasets[2]], study_key=study_key(study_uid))
    assert str(paths[1]) in refused.value.reason and "unreadable header value" in refused.value.reason


def test_encapsulated_pixel_data_that_is_not_a_codestream_is_refused(tmp_path: Path) -> None:
    _, paths = _small_series(tmp_path / "in")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\x00garbage" * 8])
        ds["PixelData"].VR = "OB"
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        path.write_bytes(buffer.getvalue())
    source = FolderDicomSource(tmp_path / "in")
    with pytest.raises(SeriesRejected, match="0 of 1 frames start a JPEG-LS"):
        source.read_instances(_only_series(source))


def test_a_series_whose_files_together_take_more_than_the_limit_to_read_is_refused_before_the_last_is_read(
        tmp_path: Path) -> None:
    """Not pixel data (that is sized from the headers): 7 MiB of private data in each file."""
    _, paths = _small_series(tmp_path / "in")
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00191010, "OB", bytes(7 * 1024**2))
        ds.save_as(path)
    limits = InputLimitSettings(max_series_bytes=SERIES_BYTES)  # reading may take this + 16 MiB
    source = FolderDicomSource(tmp_path / "in", limits=limits)
    with pytest.raises(InputLimitExceeded) as refused:
        source.read_instances(_only_series(source))
    assert refused.value.limit == "max_series_bytes" and "the series' files take more than" in refused.value.reason
    roomy = FolderDicomSource(tmp_path / "in", limits=InputLimitSettings(max_series_bytes=8 * 1024**2))
    assert len(roomy.read_instances(_only_series(roomy))) == SLICES
