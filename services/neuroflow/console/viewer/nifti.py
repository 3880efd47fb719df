"""A Volume as the gzipped NIfTI-1 file the browser's viewer reads.

SimpleITK writes it: our geometry is LPS (core.volume) and NIfTI's is RAS, and ITK's NIfTI writer is the
one conversion of the two this project trusts (it negates x and y in the qform and sform); nothing here
flips an axis by hand. The unit tests check that a voxel on the patient's left stays on the left."""

from __future__ import annotations

import tempfile
from pathlib import Path

import SimpleITK as sitk

from neuroflow.core.volume import Volume


def nifti_gz(volume: Volume) -> bytes:
    """``volume`` (voxel type kept) as the bytes of a .nii.gz file."""
    with tempfile.TemporaryDirectory(prefix="neuroflow-viewer-") as folder:
        path = Path(folder) / "volume.nii.gz"
        sitk.WriteImage(volume.to_sitk(), str(path), True)
        return path.read_bytes()
