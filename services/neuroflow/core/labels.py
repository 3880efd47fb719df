"""Segmentation label maps: BraTS labels and the tumour sub-regions derived from them, defined once."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum


class BratsLabel(IntEnum):
    """Labels of a BraTS-style multi-class label map (BraTS 2021+ uses 3 for enhancing tumour;
    older releases used 4, which readers of reference data map onto ENHANCING)."""

    BACKGROUND = 0
    NECROTIC_CORE = 1
    OEDEMA = 2
    ENHANCING = 3


LEGACY_ENHANCING_LABEL = 4


class TumourRegion(StrEnum):
    """Nested evaluation regions: WT ⊇ TC ⊇ ET. The network predicts these directly (one sigmoid each)."""

    WT = "WT"
    TC = "TC"
    ET = "ET"


# Channel order of the segmentation network's output.
TUMOUR_REGIONS: tuple[TumourRegion, ...] = (TumourRegion.WT, TumourRegion.TC, TumourRegion.ET)

# Which BraTS labels each region is made of.
REGION_LABELS: dict[TumourRegion, frozenset[BratsLabel]] = {
    TumourRegion.WT: frozenset({BratsLabel.NECROTIC_CORE, BratsLabel.OEDEMA, BratsLabel.ENHANCING}),
    TumourRegion.TC: frozenset({BratsLabel.NECROTIC_CORE, BratsLabel.ENHANCING}),
    TumourRegion.ET: frozenset({BratsLabel.ENHANCING}),
}


@dataclass(frozen=True)
class SegmentDefinition:
    """How one segment is described in a DICOM SEG (codes from SNOMED CT via DICOM CID 7151/7159)."""

    number: int
    label: str
    category_code: tuple[str, str, str]  # (value, scheme, meaning)
    type_code: tuple[str, str, str]
    rgb: tuple[int, int, int]


_MORPH_ABNORMAL = ("49755003", "SCT", "Morphologically Altered Structure")

# The segments written to DICOM SEG, one per disjoint sub-region so a viewer shows them without overlap.
GLIOMA_SEGMENTS: tuple[SegmentDefinition, ...] = (
    SegmentDefinition(1, "Necrotic and non-enhancing tumour core", _MORPH_ABNORMAL,
                      ("86049000", "SCT", "Neoplasm, Primary"), (255, 200, 0)),
    SegmentDefinition(2, "Peritumoural oedema", _MORPH_ABNORMAL,
                      ("79654002", "SCT", "Edema"), (0, 160, 255)),
    SegmentDefinition(3, "Enhancing tumour", _MORPH_ABNORMAL,
                      ("86049000", "SCT", "Neoplasm, Primary"), (255, 40, 40)),
)
# Segment number -> the BraTS label it holds.
SEGMENT_BRATS_LABEL: dict[int, BratsLabel] = {
    1: BratsLabel.NECROTIC_CORE,
    2: BratsLabel.OEDEMA,
    3: BratsLabel.ENHANCING,
}
