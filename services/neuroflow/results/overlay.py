"""Colour overlay series: a result drawn over the images it was found on, as RGB Secondary Capture images any
PACS viewer shows, one per source slice on that slice's position, orientation and frame of reference.

Each image carries, burned into its pixels (BurnedInAnnotation YES), a banner saying it is AI output and
not for diagnosis, a legend naming each colour and, when the result's failure flag is raised, a "NEEDS
REVIEW" band below the banner: a screenshot or a viewer that hides the header must still say all three.
Colours come from the Okabe-Ito palette (``core.labels.OKABE_ITO``), which readers with a colour-vision
deficiency tell apart."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import highdicom as hd
import numpy as np
import numpy.typing as npt
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import UID

import neuroflow
from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import OKABE_ITO
from neuroflow.core.slice_order import sources_in_slice_order
from neuroflow.core.uids import derived_uid
from neuroflow.core.volume import Volume
from neuroflow.results.report import DISCLAIMER

BANNER = "NOT FOR DIAGNOSIS - AI output for review"
_OVERLAY_ALPHA = 0.6  # how strongly a label's colour covers the image below it
_WINDOW_PERCENTILES = (1.0, 99.5)  # the grey scale: the bulk of the image's intensities
_TEXT_RGB = (255, 255, 255)
_PANEL_RGB = (0, 0, 0)
# The flag band: black text on Okabe-Ito orange, a colour no legend here uses (labels are yellow, sky blue,
# vermillion; change overlays their own), so it cannot be read as a finding.
FLAG_BAND_RGB = OKABE_ITO["orange"]
_FLAG_TEXT_RGB = (0, 0, 0)
_MIN_FONT_PX = 7
# Patient, study and equipment attributes an overlay copies from its source (all Type 2 in their modules).
_COPIED = ("StudyDescription", "BodyPartExamined", "FrameOfReferenceUID", "ImageOrientationPatient",
           "SliceThickness", "PositionReferenceIndicator", "IssuerOfPatientID", "SpecificCharacterSet")


@dataclass(frozen=True)
class LegendEntry:
    """One colour of an overlay: the label value it draws and what it means."""

    value: int
    name: str
    rgb: tuple[int, int, int]


def overlay_series(
    image: Volume,
    labels: Volume,
    source_instances: Sequence[pydicom.Dataset],
    *,
    legend: Sequence[LegendEntry],
    kind: str,
    input_hash: str,
    series_number: int,
    series_description: str,
    uid_root: str,
    banner: str = BANNER,
    flag: str = "",
) -> list[Dataset]:
    """An RGB Secondary Capture series, one instance per slice of ``image`` (the source series as converted,
    on its own grid), each on the position, orientation and pixel spacing of its source slice (same
    FrameOfReferenceUID): the image windowed to grey, each legend value of ``labels`` blended in its colour,
    ``banner``, ``flag`` (when not empty: the failure flag, e.g. "NEEDS REVIEW") and the legend burned in.
    UIDs derive from (``kind``, source series, ``input_hash``) under ``uid_root``: a rerun on the same inputs
    gives the same UIDs.

    Refuses (ValueError) labels on another grid than the image, and (StudyError, via
    :func:`sources_in_slice_order`) instances that do not describe the image's grid."""
    if not labels.geometry.is_close(image.geometry):
        raise ValueError("the labels are not on the grid of the image they are to be drawn on")
    ordered = sources_in_slice_order(image.geometry, source_instances)
    rgb = blend(np.asarray(image.array, dtype=np.float32), np.asarray(labels.array), legend)
    layer, mask = annotation_layer(rgb.shape[1], rgb.shape[2], banner, legend, flag=flag)
    rgb[:, mask] = layer[mask]
    entropy = (kind, str(ordered[0].SeriesInstanceUID), input_hash)
    series_uid = derived_uid(uid_root, *entropy, "series")
    # highdicom builds (and checks) the first instance; the others are copies of it placed on their slices,
    # as building each one costs tens of milliseconds (hundreds of slices per series).
    template = _instance(ordered[0], rgb[0], series_uid, derived_uid(uid_root, *entropy, "instance", "0"), 1,
                         series_number, series_description)
    instances = [template]
    for k, source in enumerate(ordered[1:], start=1):
        ds = copy.deepcopy(template)
        sop_uid = derived_uid(uid_root, *entropy, "instance", str(k))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        ds.InstanceNumber = k + 1
        _place(ds, source)
        ds.PixelData = np.ascontiguousarray(rgb[k]).tobytes()
        instances.append(ds)
    return instances


def blend(image: npt.NDArray[np.float32], labels: npt.NDArray[np.generic],
          legend: Sequence[LegendEntry]) -> npt.NDArray[np.uint8]:
    """(k, rows, columns, 3) uint8: the image windowed to grey, each legend value's colour blended over it."""
    finite = image[np.isfinite(image)]
    low, high = (np.percentile(finite, _WINDOW_PERCENTILES) if finite.size else (0.0, 1.0))
    grey = np.clip((np.nan_to_num(image) - low) / max(float(high - low), 1e-6), 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for entry in legend:
        where = labels == entry.value
        rgb[where] = (1 - _OVERLAY_ALPHA) * rgb[where] + _OVERLAY_ALPHA * np.asarray(entry.rgb, dtype=np.float32)
    return np.round(rgb).astype(np.uint8)


def annotation_layer(rows: int, columns: int, banner: str, legend: Sequence[LegendEntry], *, flag: str = ""
                     ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """The burned-in text of a ``rows`` x ``columns`` image: ``banner`` on a black band at the top, ``flag``
    (when not empty) in black on an orange band (``FLAG_BAND_RGB``) right below it, the legend (a swatch of
    each colour and its name) on a black panel at the bottom left. Returns the RGB layer and the mask of the
    pixels it covers. The font shrinks until the banner fits the width (the flag's until the flag does)."""
    canvas = Image.new("RGB", (columns, rows), (0, 0, 0))
    covered = Image.new("L", (columns, rows), 0)
    draw, cover = ImageDraw.Draw(canvas), ImageDraw.Draw(covered)
    size = _fitting_font_size(banner, columns - 4, start=max(_MIN_FONT_PX, rows // 20))
    face = font(size)
    band = size + 4
    draw.rectangle((0, 0, columns - 1, band), fill=_PANEL_RGB)
    cover.rectangle((0, 0, columns - 1, band), fill=255)
    draw.text((2, 2), banner, font=face, fill=_TEXT_RGB)
    if flag:
        # As large as the banner's text or larger (up to twice): the flag is what must not be missed.
        flag_size = _fitting_font_size(flag, columns - 4, start=max(_MIN_FONT_PX, min(2 * size, rows // 16)))
        flag_top, band = band + 1, band + 1 + flag_size + 4
        draw.rectangle((0, flag_top, columns - 1, band), fill=FLAG_BAND_RGB)
        cover.rectangle((0, flag_top, columns - 1, band), fill=255)
        draw.text((2, flag_top + 2), flag, font=font(flag_size), fill=_FLAG_TEXT_RGB)
    line = size + 3
    width = min(columns - 1, 4 + size + 4 + max((int(face.getlength(e.name)) for e in legend), default=0) + 4)
    top = rows - 1 - line * len(legend) - 4
    if legend and top > band:
        draw.rectangle((0, top, width, rows - 1), fill=_PANEL_RGB)
        cover.rectangle((0, top, width, rows - 1), fill=255)
        for n, entry in enumerate(legend):
            y = top + 3 + n * line
            draw.rectangle((4, y, 4 + size, y + size), fill=entry.rgb)
            draw.text((4 + size + 4, y), entry.name, font=face, fill=_TEXT_RGB)
    return np.asarray(canvas, dtype=np.uint8), np.asarray(covered) > 0


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fitting_font_size(text: str, width: int, *, start: int) -> int:
    size = start
    while size > _MIN_FONT_PX and font(size).getlength(text) > width:
        size -= 1
    return size


def _instance(source: Dataset, pixels: npt.NDArray[np.uint8], series_uid: str, sop_uid: str, number: int,
              series_number: int, description: str) -> Dataset:
    orientation = patient_orientation([float(v) for v in source.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
        study_instance_uid=str(source.StudyInstanceUID), series_instance_uid=series_uid,
        series_number=series_number, sop_instance_uid=sop_uid, instance_number=number,
        manufacturer=NEUROFLOW_MANUFACTURER, patient_id=source.get("PatientID"),
        patient_name=source.get("PatientName"), patient_birth_date=source.get("PatientBirthDate"),
        patient_sex=source.get("PatientSex") or None, accession_number=source.get("AccessionNumber"),
        study_id=source.get("StudyID"), study_date=source.get("StudyDate"), study_time=source.get("StudyTime"),
        referring_physician_name=source.get("ReferringPhysicianName"),
        # highdicom takes one letter per direction; an oblique slice's is several (PS3.3 C.7.6.1.1.1), set below.
        pixel_spacing=(row_spacing, column_spacing), patient_orientation=(orientation[0][0], orientation[1][0]),
    )
    sc.PatientOrientation = list(orientation)
    for keyword in _COPIED:
        if keyword in source:
            sc[keyword] = source[keyword]
    _place(sc, source)
    sc.Modality = source.get("Modality", "OT")
    sc.SeriesDescription = description
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"  # workstation: drawn by software
    sc.ManufacturerModelName = "neuroflow overlay"
    sc.SoftwareVersions = neuroflow.__version__
    sc.DerivationDescription = f"{description}. {DISCLAIMER}"
    sc.ImageComments = DISCLAIMER
    sc.BurnedInAnnotation = "YES"  # the banner and the legend are in the pixels
    return sc


def _place(ds: Dataset, source: Dataset) -> None:
    """The overlay image ``ds`` on the slice of ``source``: its position and a reference to it."""
    ds.ImagePositionPatient = source.ImagePositionPatient
    if "SliceLocation" in source:
        ds.SliceLocation = source.SliceLocation
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = [reference]


def patient_orientation(orientation: list[float]) -> tuple[str, str]:
    """PatientOrientation (row direction, column direction) from ImageOrientationPatient: each as the LPS
    letters of its main components, strongest first (e.g. ("L", "P") for an axial slice)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))

    def describe(vector: list[float]) -> str:
        order = sorted(range(3), key=lambda axis: -abs(vector[axis]))
        return "".join(letters[axis][0 if vector[axis] > 0 else 1] for axis in order if abs(vector[axis]) > 0.25)

    return describe(orientation[:3]), describe(orientation[3:])
