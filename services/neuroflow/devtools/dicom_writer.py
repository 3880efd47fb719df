"""Write volumes out as DICOM series the way scanners do, keeping their geometry exactly.

Tests and ``make demo`` have real MR volumes as NIfTI/NRRD, while neuroflow takes DICOM in. This
module turns a ``Volume`` into one single-frame MR (or CT) Image Storage file per slice with the tags a
site's scanner writes (vendor naming from ``scanner_presets``), so the whole DICOM path is exercised:

* geometry from the Volume (LPS): ImageOrientationPatient = the first two direction columns,
  ImagePositionPatient = origin + k * slice spacing * third column, PixelSpacing = [row spacing (j),
  column spacing (i)], SpacingBetweenSlices = slice spacing;
* voxel values as signed 16 bit, with RescaleSlope/Intercept only where the values need them;
* UIDs derived from a seed string, so writing the same study twice gives the same UIDs;
* anonymous file names (hashes), because a reader must never rely on them for slice order."""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import product
from pathlib import Path

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Geometry, Volume, geometry_of
from neuroflow.devtools.scanner_presets import EQUIPMENT, PRESETS, Equipment, SequencePreset, Vendor

_INT16_MIN, _INT16_MAX = -32768, 32767
# Stored values span at most this many steps, leaving headroom in int16 for the rounding of the
# slope and intercept to DICOM decimal strings.
_INT16_STEPS = 65000
_GYROMAGNETIC_MHZ_PER_T = 42.577478
_SOP_CLASS = {"MR": MRImageStorage, "CT": CTImageStorage}


@dataclass(frozen=True)
class PatientInfo:
    """A made-up patient: the demo and tests never carry real identifiers."""

    patient_id: str = "NF-DEMO-0001"
    name: str = "DEMO^GLIOMA"
    birth_date: str = "19650412"
    sex: str = "F"


@dataclass(frozen=True)
class StudyInfo:
    """Study-level facts shared by every series written for one examination."""

    seed: str
    study_instance_uid: str
    frame_of_reference_uid: str
    patient: PatientInfo
    equipment: Equipment
    accession_number: str
    study_id: str
    study_date: str  # YYYYMMDD
    study_time: str  # HHMMSS
    description: str = "MRI BRAIN W WO CONTRAST"
    institution: str = "Neuroflow Demo Hospital"

    @classmethod
    def create(
        cls,
        seed: str,
        *,
        patient: PatientInfo | None = None,
        vendor: Vendor = Vendor.SIEMENS,
        study_date: str = "20240311",
        study_time: str = "091532",
        description: str = "MRI BRAIN W WO CONTRAST",
    ) -> StudyInfo:
        """A study whose UIDs and accession number follow from ``seed`` alone (reruns agree)."""
        digest = hashlib.sha256(seed.encode()).hexdigest()
        return cls(
            seed=seed,
            study_instance_uid=_uid(seed, "study"),
            frame_of_reference_uid=_uid(seed, "frame-of-reference"),
            patient=patient or PatientInfo(),
            equipment=EQUIPMENT[vendor],
            accession_number=f"A{int(digest[:8], 16) % 10**8:08d}",
            study_id=str(int(digest[8:12], 16) % 10000),
            study_date=study_date,
            study_time=study_time,
            description=description,
        )


@dataclass(frozen=True)
class SeriesInfo:
    """Series-level facts: which sequence it is and where it sits in the study."""

    series_instance_uid: str
    series_number: int
    preset: SequencePreset
    series_time: str  # HHMMSS, when the series was acquired
    # None: the slice spacing (contiguous slices), as 3D acquisitions and most 2D protocols have.
    slice_thickness_mm: float | None = None

    @classmethod
    def create(
        cls,
        study: StudyInfo,
        preset: SequencePreset,
        *,
        series_number: int,
        minutes_after_study_start: float = 0.0,
        slice_thickness_mm: float | None = None,
    ) -> SeriesInfo:
        start = datetime.strptime(study.study_date + study.study_time, "%Y%m%d%H%M%S")
        series_time = (start + timedelta(minutes=minutes_after_study_start)).strftime("%H%M%S")
        return cls(
            series_instance_uid=_uid(study.seed, "series", str(series_number), preset.series_description),
            series_number=series_number,
            preset=preset,
            series_time=series_time,
            slice_thickness_mm=slice_thickness_mm,
        )


@dataclass(frozen=True)
class WrittenSeries:
    series_instance_uid: str
    series_description: str
    paths: list[Path]  # index k holds slice k of the volume


@dataclass(frozen=True)
class WrittenStudy:
    study_instance_uid: str
    folder: Path
    series: dict[SeriesRole, WrittenSeries] = field(default_factory=dict)


def write_series(volume: Volume, out_dir: Path, *, study: StudyInfo, series: SeriesInfo) -> list[Path]:
    """Write ``volume`` as one single-frame DICOM file per slice into ``out_dir``.

    Takes a Volume whose direction is orthonormal (the slice axis perpendicular to the rows and
    columns, either sign: left-handed volumes are written as they are). Returns the file paths in
    slice order (path k holds slice k). Refuses (ValueError) a sheared direction, which single-frame
    DICOM cannot describe, and voxel values that are NaN or infinite."""
    geometry = volume.geometry
    row_dir, col_dir, slice_dir = _checked_axes(geometry)
    encoding = _encode_int16(np.asarray(volume.array))
    header = _series_header(volume, study, series, encoding)
    normal = np.cross(row_dir, col_dir)
    origin = np.asarray(geometry.origin, dtype=np.float64)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k in range(geometry.size[2]):
        position = origin + k * geometry.spacing[2] * slice_dir
        ds = copy.deepcopy(header)
        sop_uid = _uid(series.series_instance_uid, "instance", str(k))
        ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.PixelData = encoding.stored[k].astype("<i2").tobytes()
        path = out_dir / _anonymous_name("IM", sop_uid)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_study(
    volumes: Mapping[SeriesRole, Volume],
    out_dir: Path,
    *,
    vendor: Vendor = Vendor.SIEMENS,
    patient: PatientInfo | None = None,
    seed: str = "neuroflow-demo",
    study_date: str = "20240311",
    slice_thickness_mm: Mapping[SeriesRole, float] | None = None,
    study_time: str = "091532",
    description: str | None = None,
) -> WrittenStudy:
    """Write one study: each role's volume as a series with ``vendor``'s naming for that role, in
    its own anonymously named folder under ``out_dir``, numbered and timed in the given order.

    The same ``seed`` gives the same Study/Series/SOP Instance UIDs; a patient's studies over time are
    written with one ``patient`` and different seeds and dates. ``description`` (StudyDescription) defaults
    to a head CT's when every volume is CT, else to an MR brain study's. Refuses (KeyError) a role the
    vendor presets do not describe (``SeriesRole.OTHER``)."""
    if description is None:
        description = "CT HEAD WO CONTRAST" if set(volumes) == {SeriesRole.CT} else "MRI BRAIN W WO CONTRAST"
    study = StudyInfo.create(seed, patient=patient, vendor=vendor, study_date=study_date, study_time=study_time,
                             description=description)
    equipment = study.equipment
    thickness = dict(slice_thickness_mm or {})
    written = WrittenStudy(study.study_instance_uid, out_dir)
    for index, (role, volume) in enumerate(volumes.items()):
        series = SeriesInfo.create(
            study,
            PRESETS[vendor][role],
            series_number=equipment.first_series_number + index * equipment.series_number_step,
            minutes_after_study_start=4.0 * index,
            slice_thickness_mm=thickness.get(role),
        )
        folder = out_dir / _anonymous_name("SE", series.series_instance_uid)
        paths = write_series(volume, folder, study=study, series=series)
        written.series[role] = WrittenSeries(
            series.series_instance_uid, series.preset.series_description, paths
        )
    return written


def reslice_oblique_thick(
    volume: Volume,
    *,
    tilt_deg: float,
    slice_thickness_mm: float,
    in_plane_spacing_mm: float | None = None,
) -> Volume:
    """A 2D-acquisition-like variant of ``volume``: its grid tilted by ``tilt_deg`` about the
    patient's left-right axis, with contiguous slabs ``slice_thickness_mm`` thick.

    Each output slice is the mean over its slab (the slab sampled every ~input spacing with linear
    interpolation), as a thick 2D slice integrates signal across its thickness. The output grid covers
    the whole input; outside it is 0. In-plane spacing is the input's unless ``in_plane_spacing_mm``
    is given. Integer inputs come back rounded to the same dtype, so the result can be written to
    DICOM and read back bit for bit."""
    geometry = volume.geometry
    tilt = math.radians(tilt_deg)
    about_left_right = np.array(
        [[1.0, 0.0, 0.0], [0.0, math.cos(tilt), -math.sin(tilt)], [0.0, math.sin(tilt), math.cos(tilt)]]
    )
    direction = about_left_right @ geometry.direction_matrix()
    in_plane = (
        (in_plane_spacing_mm, in_plane_spacing_mm)
        if in_plane_spacing_mm is not None
        else (geometry.spacing[0], geometry.spacing[1])
    )
    # Voxel-centre corners of the input, in the coordinates of the tilted axes.
    to_patient = geometry.index_to_patient()
    corners = np.array(
        [to_patient @ (i, j, k, 1.0) for i, j, k in product(*[(0, n - 1) for n in geometry.size])]
    )[:, :3]
    along_axes = corners @ direction  # row r = (D^T p_r)^T
    low, high = along_axes.min(axis=0), along_axes.max(axis=0)
    spacing = (in_plane[0], in_plane[1], slice_thickness_mm)
    size = [math.ceil((high[a] - low[a]) / spacing[a] - 1e-6) + 1 for a in range(3)]
    origin = direction @ low

    sub = max(1, round(slice_thickness_mm / min(geometry.spacing)))
    fine_spacing = slice_thickness_mm / sub
    # Fine samples at the centres of `sub` equal parts of each slab, so slab k averages around slice k.
    fine_origin = origin - direction[:, 2] * (slice_thickness_mm - fine_spacing) / 2
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputDirection(tuple(float(v) for v in direction.ravel()))
    resampler.SetOutputOrigin(tuple(float(v) for v in fine_origin))
    resampler.SetOutputSpacing((float(spacing[0]), float(spacing[1]), float(fine_spacing)))
    resampler.SetSize([size[0], size[1], size[2] * sub])
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetNumberOfThreads(2)
    source = sitk.Cast(volume.to_sitk(), sitk.sitkFloat32)
    fine = sitk.GetArrayFromImage(resampler.Execute(source))
    slabs = fine.reshape(size[2], sub, size[1], size[0]).mean(axis=1)
    array = _as_dtype(slabs, np.asarray(volume.array).dtype)
    resliced = Geometry(
        spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin=(float(origin[0]), float(origin[1]), float(origin[2])),
        direction=tuple(float(v) for v in direction.ravel()),
        size=(size[0], size[1], size[2]),
    )
    meta = dict(volume.meta)
    meta["resliced"] = f"tilt {tilt_deg:g} deg about L-R, {slice_thickness_mm:g} mm slabs"
    return Volume(array, resliced, meta)


def load_volume(path: Path) -> Volume:
    """Read a 3D scalar NIfTI or NRRD file with SimpleITK, geometry in LPS (SimpleITK turns NIfTI's
    RAS affine into LPS itself). Refuses (ValueError) anything that is not a 3D scalar image."""
    image = sitk.ReadImage(str(path))
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"{path}: expected a 3D scalar image, found {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components per voxel"
        )
    return Volume(sitk.GetArrayFromImage(image), geometry_of(image), {"source": path.name})


@dataclass(frozen=True)
class _Int16Encoding:
    stored: npt.NDArray[np.int16]
    slope: str | None  # DICOM decimal strings; None when stored values are the voxel values
    intercept: str | None
    window_center: str
    window_width: str


def _encode_int16(values: npt.NDArray[np.generic]) -> _Int16Encoding:
    """Signed 16-bit stored values, with a slope and intercept only when the values need them.

    The slope and intercept are rounded to DICOM decimal strings *before* quantising, so a reader
    applying the written strings gets the intended values back (exactly, for integer data in range)."""
    data = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(data)):
        raise ValueError("volume has NaN or infinite voxels, which DICOM pixel data cannot hold")
    low, high = float(data.min()), float(data.max())
    if low >= _INT16_MIN and high <= _INT16_MAX and np.array_equal(data, np.round(data)):
        stored = data.astype(np.int16)
        slope: str | None = None
        intercept: str | None = None
    else:
        intercept = _ds((low + high) / 2)
        slope = _ds((high - low) / _INT16_STEPS if high > low else 1.0)
        quantised = np.round((data - float(intercept)) / float(slope))
        stored = np.clip(quantised, _INT16_MIN, _INT16_MAX).astype(np.int16)
    # A display window over the bulk of the intensities, as scanners set one (strided: cheap).
    sample = data[:, ::4, ::4]
    p_low, p_high = np.percentile(sample, [1.0, 99.5])
    width = max(float(p_high - p_low), 1.0)
    return _Int16Encoding(stored, slope, intercept, _ds((p_low + p_high) / 2), _ds(width))


def _series_header(volume: Volume, study: StudyInfo, series: SeriesInfo, encoding: _Int16Encoding) -> Dataset:
    """Every attribute that is the same for all slices of the series."""
    preset = series.preset
    equipment = study.equipment
    geometry = volume.geometry
    row_dir, col_dir, _ = _checked_axes(geometry)
    sop_class = _SOP_CLASS[preset.modality]

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(preset.image_type)
    ds.SOPClassUID = sop_class
    ds.StudyDate = study.study_date
    ds.SeriesDate = study.study_date
    ds.AcquisitionDate = study.study_date
    ds.ContentDate = study.study_date
    ds.StudyTime = study.study_time
    ds.SeriesTime = series.series_time
    ds.AcquisitionTime = series.series_time
    ds.ContentTime = series.series_time
    ds.AccessionNumber = study.accession_number
    ds.Modality = preset.modality
    ds.Manufacturer = equipment.manufacturer
    ds.InstitutionName = study.institution
    ds.ReferringPhysicianName = ""
    ds.StationName = equipment.station_name
    ds.StudyDescription = study.description
    ds.SeriesDescription = preset.series_description
    ds.ManufacturerModelName = equipment.mr_model if preset.modality == "MR" else equipment.ct_model

    patient = study.patient
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, study.study_date)

    if preset.contrast_agent:
        ds.ContrastBolusAgent = preset.contrast_agent
    ds.BodyPartExamined = "HEAD"
    slice_spacing = geometry.spacing[2]
    ds.SliceThickness = _ds(series.slice_thickness_mm or slice_spacing)
    if preset.modality == "MR":
        _add_mr_acquisition(ds, preset, equipment)
        ds.SpacingBetweenSlices = _ds(slice_spacing)
    else:
        ds.KVP = _ds(preset.kvp or 120.0)
        ds.ConvolutionKernel = preset.convolution_kernel or ""
    ds.SoftwareVersions = equipment.software_versions.split("\\")
    ds.ProtocolName = preset.protocol_name
    ds.PatientPosition = "HFS"

    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.size[1]
    ds.Columns = geometry.size[0]
    # PixelSpacing is (between rows, between columns) = (j spacing, i spacing).
    ds.PixelSpacing = [_ds(geometry.spacing[1]), _ds(geometry.spacing[0])]
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = encoding.window_center
    ds.WindowWidth = encoding.window_width
    if preset.modality == "CT":  # Rescale is mandatory in CT, in Hounsfield units
        ds.RescaleIntercept = encoding.intercept or "0"
        ds.RescaleSlope = encoding.slope or "1"
        ds.RescaleType = "HU"
    elif encoding.slope is not None:
        ds.RescaleIntercept = encoding.intercept
        ds.RescaleSlope = encoding.slope
        ds.RescaleType = "US"
    ds.LossyImageCompression = "00"
    return ds


def _add_mr_acquisition(ds: Dataset, preset: SequencePreset, equipment: Equipment) -> None:
    ds.ScanningSequence = list(preset.scanning_sequence)
    ds.SequenceVariant = list(preset.sequence_variant) or ["NONE"]
    ds.ScanOptions = list(preset.scan_options) if preset.scan_options else ""
    ds.MRAcquisitionType = preset.acquisition_type
    ds.SequenceName = preset.sequence_name
    ds.AngioFlag = "N"
    ds.RepetitionTime = _ds(preset.repetition_time_ms or 0.0)
    ds.EchoTime = _ds(preset.echo_time_ms or 0.0)
    if preset.inversion_time_ms is not None:
        ds.InversionTime = _ds(preset.inversion_time_ms)
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = _ds(equipment.field_strength_t * _GYROMAGNETIC_MHZ_PER_T)
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = _ds(equipment.field_strength_t)
    ds.EchoTrainLength = preset.echo_train_length
    if preset.flip_angle_deg is not None:
        ds.FlipAngle = _ds(preset.flip_angle_deg)
    if preset.diffusion_b_value is not None:
        ds.DiffusionBValue = preset.diffusion_b_value


def _checked_axes(
    geometry: Geometry,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The row (i), column (j) and slice (k) unit vectors; refuses a direction DICOM cannot hold."""
    direction = geometry.direction_matrix()
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-6):
        raise ValueError(
            f"direction {geometry.direction} is not orthonormal: single-frame DICOM slices cannot "
            "describe a sheared grid"
        )
    return direction[:, 0], direction[:, 1], direction[:, 2]


def _as_dtype(values: npt.NDArray[np.floating], dtype: np.dtype[np.generic]) -> npt.NDArray[np.generic]:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)  # type: ignore[type-var]
        return np.clip(np.round(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _uid(*parts: str) -> str:
    """A UID that is a function of ``parts`` only, so reruns of the writer agree."""
    return str(generate_uid(entropy_srcs=list(parts)))


def _anonymous_name(prefix: str, uid: str) -> str:
    return prefix + hashlib.sha1(uid.encode()).hexdigest()[:12].upper()


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) as close to ``value`` as fits."""
    value = float(value)
    if abs(value) < 1e-12:  # no "-0" or "6.1e-17" noise from cos(90°) in orientation vectors
        value = 0.0
    return str(format_number_as_ds(value))


def _age(birth_date: str, on_date: str) -> str:
    born = datetime.strptime(birth_date, "%Y%m%d")
    day = datetime.strptime(on_date, "%Y%m%d")
    years = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    return f"{years:03d}Y"
