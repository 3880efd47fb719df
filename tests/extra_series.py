"""Series real studies carry beside the pipeline's inputs (a DTI phase map, a second FLAIR protocol, a
repeat), written into a study by the project's DICOM writer from a vendor preset with some tags changed.
Routing reads only headers, so the voxels are a small synthetic block."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume
from neuroflow.devtools.dicom_writer import SeriesInfo, StudyInfo, WrittenStudy, write_series, write_study
from neuroflow.devtools.scanner_presets import PRESETS, SequencePreset, Vendor

GLIOMA_ROLES = (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2, SeriesRole.FLAIR)
# The phase map of a Siemens multiband DTI that was once taken for the T2 (issue 14).
DTI_PHASE = "DTIphase_S2MB2"


def block(slices: int = 12, size: int = 16, thickness_mm: float = 1.0) -> Volume:
    """A small volume of noise: enough for a header, nothing to segment."""
    values = np.random.default_rng(slices * 1000 + size).integers(0, 1000, (slices, size, size)).astype(np.int16)
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    return Volume(values, Geometry((1.0, 1.0, thickness_mm), (0.0, 0.0, 0.0), identity, (size, size, slices)))


def write_small_study(folder: Path, roles: tuple[SeriesRole, ...] = GLIOMA_ROLES, *, seed: str,
                      vendor: Vendor = Vendor.SIEMENS) -> WrittenStudy:
    return write_study({role: block() for role in roles}, folder, vendor=vendor, seed=seed)


def preset(role: SeriesRole, vendor: Vendor = Vendor.SIEMENS, **changes: Any) -> SequencePreset:
    """The vendor's preset for ``role`` with ``changes`` (SequencePreset field names)."""
    return replace(PRESETS[vendor][role], **changes)


def dti_phase_preset(vendor: Vendor = Vendor.SIEMENS, **changes: Any) -> SequencePreset:
    """The phase map as the scanner writes it: ImageType ORIGINAL\\PRIMARY\\P\\ND, the diffusion sequence's
    timing (read out as a spin echo) and b-value."""
    fields: dict[str, Any] = {
        "series_description": DTI_PHASE, "protocol_name": "ep2d_S2MB2",
        "image_type": ("ORIGINAL", "PRIMARY", "P", "ND"), "sequence_name": "", "scanning_sequence": ("SE",),
        "sequence_variant": ("SK", "SP"),
        "acquisition_type": "2D", "repetition_time_ms": 3200.0, "echo_time_ms": 89.0, "inversion_time_ms": None,
        "flip_angle_deg": 90.0, "diffusion_b_value": 1000.0, "contrast_agent": None, "also_seen_as": (),
    }
    fields.update(changes)
    return preset(SeriesRole.T2, vendor, **fields)


def add_series(folder: Path, series_preset: SequencePreset, *, seed: str, series_number: int,
               minutes_after_start: float, vendor: Vendor = Vendor.SIEMENS, volume: Volume | None = None) -> str:
    """Writes one more series into the study ``write_study`` made from ``seed`` (same UIDs, same patient);
    returns its Series Instance UID."""
    study = StudyInfo.create(seed, vendor=vendor)
    series = SeriesInfo.create(study, series_preset, series_number=series_number,
                               minutes_after_study_start=minutes_after_start)
    write_series(volume or block(), folder / f"extra-{series_number}", study=study, series=series)
    return series.series_instance_uid
