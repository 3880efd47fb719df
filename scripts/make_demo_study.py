"""Writes the bundled real glioma case (TCGA-DU-7294, compressed NIfTI in tests/data) out as a DICOM
study with realistic Siemens tags, for `make demo`. The volumes keep their geometry exactly."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from neuroflow.core.roles import SeriesRole
from neuroflow.devtools.dicom_writer import load_volume, write_study
from neuroflow.devtools.scanner_presets import Vendor

CASE = Path(__file__).resolve().parents[1] / "tests" / "data" / "glioma-tcga-du-7294"
FILES = {
    SeriesRole.T1: "t1_bet.nii.gz",
    SeriesRole.T1CE: "t1c_bet.nii.gz",
    SeriesRole.T2: "t2_bet.nii.gz",
    SeriesRole.FLAIR: "fla_bet.nii.gz",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--vendor", type=Vendor, choices=list(Vendor), default=Vendor.SIEMENS)
    args = parser.parse_args()
    if args.out_dir.exists():
        shutil.rmtree(args.out_dir)
    volumes = {role: load_volume(CASE / name) for role, name in FILES.items()}
    write_study(volumes, args.out_dir, vendor=args.vendor, seed="tcga-du-7294")
    print(f"wrote DICOM study from {CASE.name} to {args.out_dir}")


if __name__ == "__main__":
    main()
