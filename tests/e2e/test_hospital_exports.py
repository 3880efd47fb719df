"""`neuroflow run` on a study as a hospital PACS hands it over: a Philips export with a Raw Data Storage
object under each image series' UID and a presentation state beside them, every image stored JPEG Lossless
SV1 (the usual archive syntax). The raw objects and the presentation state are set aside and listed in the
report; every image series converts; the run succeeds."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import JPEGLosslessSV1

from neuroflow.core.roles import GLIOMA_INPUT_ROLES
from neuroflow.devtools.dicom_writer import write_study
from neuroflow.devtools.non_image_objects import write_non_image, write_raw_data
from neuroflow.devtools.scanner_presets import Vendor
from neuroflow.devtools.transfer_syntaxes import recompress
from tests.e2e.conftest import run_cli, tcga_volumes


def test_philips_pacs_export_with_raw_objects_and_jpeg_lossless_runs(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    written = write_study(tcga_volumes(), folder / "DICOM", vendor=Vendor.PHILIPS, seed="philips-pacs")
    for series in written.series.values():
        for path in series.paths:
            recompress(path, JPEGLosslessSV1)
        write_raw_data(series.paths[0], folder / "DICOM" / "RAW" / f"XX_{series.paths[0].name}")
    first = next(iter(written.series.values())).paths[0]
    write_non_image(first, folder / "DICOM" / "PS" / "XX_0001", "presentation state", series_number=9001)

    run = run_cli("run", folder, out_dir=tmp_path / "out")

    assert run.returncode == 0, run.stderr
    report = run.report
    assert report["status"] == "succeeded"
    assert (run.out_dir / "seg.dcm").exists()
    used = {s["used_as"] for s in report["series"] if s["used_as"]}
    assert used == {role.value for role in GLIOMA_INPUT_ROLES}
    raw_notes = [w for w in report["warnings"] if w.startswith("set aside 1 Raw Data Storage object in series ")]
    assert len(raw_notes) == len(written.series)
    assert any("Grayscale Softcopy Presentation State Storage object in series 9001" in w for w in report["warnings"])
    assert report["volumes_ml"]["WT"] > 0
