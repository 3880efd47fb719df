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

# Okabe & Ito's palette (2008): told apart with every common colour-vision deficiency. Every colour neuroflow
# draws a result in comes from here.
OKABE_ITO: dict[str, tuple[int, int, int]] = {
    "orange": (230, 159, 0),
    "sky_blue": (86, 180, 233),
    "bluish_green": (0, 158, 115),
    "yellow": (240, 228, 66),
    "blue": (0, 114, 178),
    "vermillion": (213, 94, 0),
    "reddish_purple": (204, 121, 167),
}

# No SNOMED CT concept in the DICOM code tables (PS3.16, as pydicom ships them) names a resection cavity; the
# nearest is SCT 43526002 "Operative site" (CID 6201), used as the segmented property type of a morphologically
# altered structure. The segment's label says what it is: "Resection cavity".
RESECTION_CAVITY_CODE = ("43526002", "SCT", "Operative site")

# Concepts no SNOMED CT code names (the BraTS sub-regions), in neuroflow's own coding scheme: a private
# scheme designator starts with "99" (PS3.16 8.2).
LOCAL_CODING_SCHEME = "99NEUROFLOW"
# The coded concept of each reported glioma region (value, scheme, meaning): one code per region, never one
# twice, in the SEG's segments and the SR's findings alike.
REGION_CODES: dict[str, tuple[str, str, str]] = {
    "WT": ("BRATS-WT", LOCAL_CODING_SCHEME, "Whole tumor (BraTS)"),
    "TC": ("BRATS-TC", LOCAL_CODING_SCHEME, "Tumor core (BraTS)"),
    "ET": ("BRATS-ET", LOCAL_CODING_SCHEME, "Enhancing tumor (BraTS)"),
    "oedema": ("79654002", "SCT", "Edema"),
    "necrotic_core": ("6574001", "SCT", "Necrosis"),
    "resection_cavity": RESECTION_CAVITY_CODE,  # post-operative results only
}

# The segments written to DICOM SEG, one per disjoint sub-region so a viewer shows them without overlap.
GLIOMA_SEGMENTS: tuple[SegmentDefinition, ...] = (
    SegmentDefinition(1, "Necrotic and non-enhancing tumour core", _MORPH_ABNORMAL,
                      REGION_CODES["necrotic_core"], OKABE_ITO["yellow"]),
    SegmentDefinition(2, "Peritumoural oedema", _MORPH_ABNORMAL, REGION_CODES["oedema"], OKABE_ITO["sky_blue"]),
    SegmentDefinition(3, "Enhancing tumour", _MORPH_ABNORMAL, REGION_CODES["ET"], OKABE_ITO["vermillion"]),
)
# The report region (a key of TumourVolumes' dump) each SEG segment draws.
SEGMENT_REGION: dict[int, str] = {1: "necrotic_core", 2: "oedema", 3: "ET"}
# Segment number -> the BraTS label it holds.
SEGMENT_BRATS_LABEL: dict[int, BratsLabel] = {
    1: BratsLabel.NECROTIC_CORE,
    2: BratsLabel.OEDEMA,
    3: BratsLabel.ENHANCING,
}
# The regions a segment's boundary depends on: a sub-region is drawn only when the sequences at hand show them
# all (core/sequence_subsets.not_assessable): oedema is WT outside TC, the necrotic core TC outside ET.
SEGMENT_NEEDS: dict[BratsLabel, frozenset[TumourRegion]] = {
    BratsLabel.NECROTIC_CORE: frozenset({TumourRegion.TC, TumourRegion.ET}),
    BratsLabel.OEDEMA: frozenset({TumourRegion.WT, TumourRegion.TC}),
    BratsLabel.ENHANCING: frozenset({TumourRegion.ET}),
}
# Drawn in place of the sub-regions when the whole tumour can be assessed but its core cannot (no T1
# post-contrast): every tumour label as one segment, numbered when the SEG is built.
WHOLE_TUMOUR_SEGMENT = SegmentDefinition(0, "Whole tumour (core not assessable)", _MORPH_ABNORMAL,
                                         ("108369006", "SCT", "Neoplasm"), (0, 160, 255))

# Post-operative glioma (issue 15): the resection cavity, a label of its own beside the tumour labels of the
# glioma label map, never part of WT/TC/ET (REGION_LABELS does not name it). 5, not 4: 4 is the enhancing
# tumour of older BraTS releases (LEGACY_ENHANCING_LABEL), which readers of reference data map onto ET.
RESECTION_CAVITY_LABEL = 5
# Drawn after the tumour segments of a post-operative result, numbered when the SEG is built; bluish green, a
# colour the tumour segments do not use.
RESECTION_CAVITY_SEGMENT = SegmentDefinition(0, "Resection cavity (rule-based estimate)", _MORPH_ABNORMAL,
                                             RESECTION_CAVITY_CODE, OKABE_ITO["bluish_green"])


class ChangeLabel(IntEnum):
    """Labels of the MS change map on the follow-up FLAIR grid (what the SEG and the overlay draw)."""

    NONE = 0
    NEW_LESION = 1  # new or enlarging lesion: vermillion in the overlay, the SEG's only segment
    REJECTED_CANDIDATE = 2  # a candidate the detector discarded, with its reason: blue in the overlay


# The segments of the change SEGs: one per object, numbered from 1 (DICOM segment numbers).
MS_NEW_LESION_SEGMENT = SegmentDefinition(1, "New or enlarging lesion", _MORPH_ABNORMAL,
                                          ("52988006", "SCT", "Lesion"), OKABE_ITO["vermillion"])
HAEMATOMA_SEGMENT = SegmentDefinition(1, "Haematoma", _MORPH_ABNORMAL,
                                      ("35566002", "SCT", "Hematoma"), (200, 0, 200))
# Blood-density regions besides the haematoma (a second bleed, a contusion): shown, not part of the verdict.
OTHER_BLOOD_SEGMENT = SegmentDefinition(2, "Other blood-density region", _MORPH_ABNORMAL,
                                        ("50960005", "SCT", "Hemorrhage"), (255, 160, 0))
# Overlay colours (RGB) by change label.
CHANGE_OVERLAY_RGB: dict[ChangeLabel, tuple[int, int, int]] = {
    ChangeLabel.NEW_LESION: OKABE_ITO["vermillion"],
    ChangeLabel.REJECTED_CANDIDATE: OKABE_ITO["blue"],
}

# Brain metastases (issue 15): lesion n of the lesion label map (segmentation/lesions.py, largest first) is
# "Met n" in every object that names it (SEG segment n, RTSTRUCT ROI n, the SR's lesion rows), coded as a
# metastatic neoplasm and coloured in turn from the Okabe-Ito palette, the same colour in SEG and RTSTRUCT.
METASTASIS_CODE = ("14799000", "SCT", "Neoplasm, metastatic")
METASTASIS_NAME_PREFIX = "Met"


def metastasis_segment(number: int) -> SegmentDefinition:
    """Lesion ``number`` (from 1) as a segment / ROI: "Met <number>", its code and colour."""
    if number < 1:
        raise ValueError(f"lesion numbers start at 1, got {number}")
    colours = list(OKABE_ITO.values())
    return SegmentDefinition(number, f"{METASTASIS_NAME_PREFIX} {number}", _MORPH_ABNORMAL, METASTASIS_CODE,
                             colours[(number - 1) % len(colours)])
