"""Objects that share a series with images but are not images: set aside when a study is indexed.

Scanners and PACS put raw data (Philips stores a Raw Data Storage object under each image series' UID),
presentation states, structured reports, key object selections, encapsulated PDFs and spectroscopy
beside the images, and our own results (SEG, RT structure sets, secondary captures) come back from the
PACS. None of them is a slice: fed to conversion they would refuse the whole series ("no Rows/Columns").
Decided from the header alone (SOP Class UID, manufacturer, Rows/Columns), so both runtimes decide alike
before anything is classified or converted, and the report says what was set aside.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID

from neuroflow.core.identity import NEUROFLOW_MANUFACTURER

# SOP classes that never hold an image to convert, by exact UID or by UID prefix (a family of classes).
_NON_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration Storage",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials Storage",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration Storage",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping Storage",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR Spectroscopy Storage",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
    "1.3.12.2.1107.5.9.1": "Siemens CSA Non-Image Storage",
}
_NON_IMAGE_FAMILIES = (
    ("1.2.840.10008.5.1.4.1.1.11.", "presentation state"),
    ("1.2.840.10008.5.1.4.1.1.88.", "structured report / key object selection"),
    ("1.2.840.10008.5.1.4.1.1.104.", "encapsulated document"),
    ("1.2.840.10008.5.1.4.1.1.9.", "waveform"),
)


@dataclass(frozen=True)
class SetAside:
    """Objects of one kind set aside from one series: never classified, never converted."""

    series_instance_uid: str
    series_number: int | None
    series_description: str
    what: str  # the SOP class's name, or what else made it no image
    count: int
    # Their headers (an earlier result of ours among them: the results stage supersedes it).
    headers: tuple[Dataset, ...] = field(default=(), compare=False, repr=False)
    # Where each of them lives in the source (as SeriesInstances.paths): to read one in full, e.g. a prior's SEG.
    paths: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def note(self) -> str:
        """One line for report.json warnings and summary.txt (no patient identifier)."""
        number = f"series {self.series_number}" if self.series_number is not None else "a series without a number"
        description = f" ({self.series_description})" if self.series_description else ""
        plural = "object" if self.count == 1 else "objects"
        return f"set aside {self.count} {self.what} {plural} in {number}{description}: not an image, not converted"


def why_not_an_image(header: Dataset) -> str | None:
    """None for an object conversion can take; else what it is (the SOP class's name, or why)."""
    sop_class = str(header.get("SOPClassUID", "") or "")
    if sop_class in _NON_IMAGE_CLASSES:
        return _NON_IMAGE_CLASSES[sop_class]
    for prefix, family in _NON_IMAGE_FAMILIES:
        if sop_class.startswith(prefix):
            name = UID(sop_class).name
            return name if name != sop_class else family
    if str(header.get("Manufacturer", "") or "") == NEUROFLOW_MANUFACTURER:
        return "neuroflow result"  # our own SEG overlays and secondary captures, back from the PACS
    if "Rows" not in header or "Columns" not in header:
        return "pixel-less"  # an unknown or private class without an image matrix
    return None


def series_number(header: Dataset) -> int | None:
    try:
        value = header.get("SeriesNumber")
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
