"""Series roles: the one place that names the kinds of series neuroflow tells apart."""

from __future__ import annotations

from enum import StrEnum


class SeriesRole(StrEnum):
    T1 = "T1"
    T1CE = "T1CE"
    T2 = "T2"
    FLAIR = "FLAIR"
    ADC = "ADC"
    DWI = "DWI"
    SWI = "SWI"
    CT = "CT"
    OTHER = "other"


# The inputs of the glioma pipeline, in the channel order the segmentation model expects.
GLIOMA_INPUT_ROLES: tuple[SeriesRole, ...] = (SeriesRole.T1, SeriesRole.T1CE, SeriesRole.T2, SeriesRole.FLAIR)
# Every co-registration in the glioma pipeline is onto this series.
GLIOMA_REFERENCE_ROLE = SeriesRole.T1CE
