"""`neuroflow classify` on a study whose series hold several volumes (multi-echo GRE, a dynamic series,
DWI with three directions, an enhanced MR with two stacks, a MOSAIC time series) lists every volume on
a line of its own; routing hands a volume on by its sub-series identity and conversion builds that
volume from the series' instances."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neuroflow.core.dicom_io import FolderDicomSource, find_series, series_volume
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, load_volume, write_study
from neuroflow.devtools.multi_volume_writer import (
    VolumeTags,
    write_enhanced_series,
    write_mosaic_series,
    write_multi_volume_series,
)
from neuroflow.devtools.scanner_presets import MULTI_VOLUME_PRESETS, Vendor
from neuroflow.ingest.classify import classify_study
from neuroflow.preprocess.glioma_inputs import convert_inputs
from neuroflow.proto.neuroflow.v1 import common_pb2

from .conftest import TCGA, TCGA_FILES, run_cli

DIRECTIONS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))


def _scaled(volume: Volume, factor: float) -> Volume:
    return volume.with_array(np.round(np.asarray(volume.array, dtype=np.float64) * factor).astype(np.int16))


@pytest.fixture(scope="module")
def multi_volume_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Siemens study: five series, thirteen volumes."""
    folder = tmp_path_factory.mktemp("multi-volume")
    full = load_volume(TCGA / "t2_bet.nii.gz")
    volume = Volume.from_sitk(full.to_sitk()[90:154, 100:164, 60:80])
    study = StudyInfo.create("multi-volume-cli")

    def series(name: str, number: int) -> SeriesInfo:
        return SeriesInfo.create(study, MULTI_VOLUME_PRESETS[name], series_number=number)

    write_multi_volume_series(
        [(volume, VolumeTags(echo_number=1, echo_time_ms=4.92)),
         (_scaled(volume, 0.8), VolumeTags(echo_number=2, echo_time_ms=7.38))],
        folder / "gre", study=study, series=series("field_map", 3))
    write_multi_volume_series(
        [(_scaled(volume, f), VolumeTags(temporal_position=t + 1, acquisition_number=t + 1))
         for t, f in enumerate((1.0, 1.2, 1.1))],
        folder / "dyn", study=study, series=series("dynamic", 4))
    b0 = volume.with_array(np.asarray(volume.array, dtype=np.int16) + 500)
    write_multi_volume_series(
        [(b0, VolumeTags(b_value=0.0)),
         *((_scaled(b0, 0.45), VolumeTags(b_value=1000.0, gradient=g)) for g in DIRECTIONS)],
        folder / "dwi", study=study, series=series("dwi_directions", 5))
    write_enhanced_series(
        [(volume, VolumeTags(stack_id="1")), (_scaled(volume, 0.5), VolumeTags(stack_id="2"))],
        folder / "enh", study=study, series=series("dynamic", 6))
    write_mosaic_series([_scaled(volume, f) for f in (1.0, 0.9, 1.1)], folder / "bold", study=study,
                        series=series("bold_mosaic", 7))
    return folder


def test_classify_lists_one_line_per_volume(multi_volume_study: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "neuroflow.cli", "classify", str(multi_volume_study)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("(5 series)")
    rows = [line for line in lines[2:] if line.strip()]
    shown = [next(part for part in row.split("  ") if "[" in part).strip() for row in rows]
    assert shown == [
        "gre_field_mapping [echo=1]", "gre_field_mapping [echo=2]",
        "t1_fl2d_tra_dynamic [time=1]", "t1_fl2d_tra_dynamic [time=2]", "t1_fl2d_tra_dynamic [time=3]",
        "ep2d_diff_mddw_3dir_p2 [b=0]", "ep2d_diff_mddw_3dir_p2 [b=1000]", "ep2d_diff_mddw_3dir_p2 [ADC compu...",
        "t1_fl2d_tra_dynamic [stack=1]", "t1_fl2d_tra_dynamic [stack=2]",
        "ep2d_bold_moco [image=1]", "ep2d_bold_moco [image=2]", "ep2d_bold_moco [image=3]",
    ]
    adc_row = rows[7]
    assert " ADC " in adc_row and "ImageType" in adc_row


def test_a_routed_volume_is_found_and_converted_by_its_sub_series_identity(multi_volume_study: Path) -> None:
    source = FolderDicomSource(multi_volume_study)
    studies, _ = source.index()
    (study,) = studies.values()
    classified = {c.description: c for c in classify_study(list(study.series.values()))}
    adc = classified["ep2d_diff_mddw_3dir_p2 [ADC computed]"]
    echo2 = classified["gre_field_mapping [echo=2]"]
    assert adc.role == SeriesRole.ADC and adc.series_instance_uid.endswith("#adc")
    # What a worker does with a StudyReady naming these volumes (the preprocess and longitudinal workers).
    refs = [common_pb2.SeriesRef(series_instance_uid=c.series_instance_uid, role=role.value,
                                 instance_count=c.instance_count)
            for role, c in ((SeriesRole.ADC, adc), (SeriesRole.T2, echo2))]
    ref = common_pb2.StudyRef(study_instance_uid=study.study_instance_uid, study_key="k")
    found = find_series(source, ref, refs, stage="preprocess")
    assert {role: s.volume for role, s in found.items()} == {SeriesRole.ADC: "adc", SeriesRole.T2: "echo=2"}
    assert series_volume(study, echo2.series_instance_uid).volume == "echo=2"
    volumes = convert_inputs({role: source.read_instances(s) for role, s in found.items()}, study_key="k",
                             volumes={role: s.volume for role, s in found.items()})
    assert volumes[SeriesRole.T2].meta["series_instance_uid"] == echo2.series_instance_uid
    assert volumes[SeriesRole.T2].geometry.size == (64, 64, 20)
    adc_map = volumes[SeriesRole.ADC].array
    inside = adc_map > 0
    expected = -np.log(0.45) / 1000  # every b=1000 image is 0.45 of its b=0 (to the int16 rounding)
    assert inside.mean() > 0.5
    assert np.all(np.abs(adc_map[inside] - expected) <= 0.05 * expected)


def test_run_takes_the_t2_from_the_second_echo_of_a_dual_echo_series(tmp_path: Path) -> None:
    """The glioma pipeline on TCGA-DU-7294 whose T2 came as the second echo of a PD + T2 series: the run
    succeeds on that echo, and the report lists both echoes, the second used as the T2."""
    seed = "tcga-du-7294-dual-echo"
    others = {role: load_volume(TCGA / name) for role, name in TCGA_FILES.items() if role != SeriesRole.T2}
    write_study(others, tmp_path / "in", vendor=Vendor.SIEMENS, seed=seed)
    t2 = load_volume(TCGA / TCGA_FILES[SeriesRole.T2])
    proton_density = t2.with_array((np.asarray(t2.array, dtype=np.float64) * 0.6 + 40).astype(np.int16))
    study = StudyInfo.create(seed)
    series = SeriesInfo.create(study, MULTI_VOLUME_PRESETS["pd_t2"], series_number=9)
    write_multi_volume_series(
        [(proton_density, VolumeTags(echo_number=1, echo_time_ms=12.0)),
         (t2, VolumeTags(echo_number=2, echo_time_ms=96.0))],
        tmp_path / "in" / "pdt2", study=study, series=series)
    run = run_cli("run", tmp_path / "in", out_dir=tmp_path / "out")
    assert run.returncode == 0, run.stderr
    entries = {s["series_instance_uid"]: s for s in run.report["series"]}
    echo2 = entries[f"{series.series_instance_uid}#echo=2"]
    assert echo2["used_as"] == SeriesRole.T2.value
    assert echo2["description"] == "pd+t2_tse_tra [echo=2]"
    assert entries[f"{series.series_instance_uid}#echo=1"]["used_as"] is None
    assert (tmp_path / "out" / "seg.dcm").exists()
