"""A Volume as the gzipped NIfTI-1 file the browser's viewer reads.

SimpleITK writes it: our geometry is LPS (core.volume) and NIfTI's is RAS, and ITK's NIfTI writer is the
one conversion of the two this project trusts (it negates x and y in the qform and sform); nothing here
flips an axis by hand. The unit tests check that a voxel on the patient's left stays on the left."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from neuroflow.core.volume import Volume

_INT16 = np.iinfo(np.int16)


def nifti_gz(volume: Volume) -> bytes:
    """``volume`` as the bytes of a .nii.gz file: float values that are whole numbers within int16 (what
    a scanner stores, rescaled) go as int16, half the bytes to send and draw; everything else as it is."""
    with tempfile.TemporaryDirectory(prefix="neuroflow-viewer-") as folder:
        path = Path(folder) / "volume.nii.gz"
        sitk.WriteImage(_compact(volume).to_sitk(), str(path), True)
        return path.read_bytes()


def _compact(volume: Volume) -> Volume:
    array = np.asarray(volume.array)
    if array.dtype.kind != "f" or not array.size:
        return volume
    low, high = float(array.min()), float(array.max())
    if low < _INT16.min or high > _INT16.max or not np.array_equal(array, np.round(array)):
        return volume
    return volume.with_array(array.astype(np.int16))
