"""Series roles: the one place that names the kinds of series neuroflow tells apart."""

from __future__ import annotations

from enum import StrEnum

from neuroflow.core.config import (
    HAEMATOMA_CHANGE_PIPELINE,
    METASTASES_PIPELINE,
    METASTASES_RESPONSE_PIPELINE,
    MS_CHANGE_PIPELINE,
    TUMOUR_GROWTH_PIPELINE,
)


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
# Metastases (issue 15): enhancement is read on the T1CE (required); FLAIR (oedema) helps when present.
METASTASES_INPUT_ROLES: tuple[SeriesRole, ...] = (SeriesRole.T1CE, SeriesRole.FLAIR)
# Every co-registration in the glioma pipeline is onto the first of these the study has, and the SEG is drawn on
# it: T1CE (usually a thin-slice 3D acquisition, the images enhancement is read on), else FLAIR (the whole
# tumour's sequence, often 3D too), then T1 and T2 (core/sequence_subsets.py: a study may lack some).
GLIOMA_REFERENCE_ORDER: tuple[SeriesRole, ...] = (SeriesRole.T1CE, SeriesRole.FLAIR, SeriesRole.T1, SeriesRole.T2)
GLIOMA_REFERENCE_ROLE = GLIOMA_REFERENCE_ORDER[0]


class ChangePipeline(StrEnum):
    """The longitudinal change pipelines: each compares a study with the patient's previous one."""

    MS = MS_CHANGE_PIPELINE
    HAEMATOMA = HAEMATOMA_CHANGE_PIPELINE
    TUMOUR_GROWTH = TUMOUR_GROWTH_PIPELINE
    METASTASES_RESPONSE = METASTASES_RESPONSE_PIPELINE


# The roles each change pipeline needs at both timepoints of a pair ...
CHANGE_REQUIRED_ROLES: dict[ChangePipeline, tuple[SeriesRole, ...]] = {
    ChangePipeline.MS: (SeriesRole.FLAIR,),
    ChangePipeline.HAEMATOMA: (SeriesRole.CT,),
    ChangePipeline.TUMOUR_GROWTH: GLIOMA_INPUT_ROLES,
    ChangePipeline.METASTASES_RESPONSE: (SeriesRole.T1CE,),
}
# ... and those it uses when present (MS: T1/T2 help skull stripping and registration).
CHANGE_OPTIONAL_ROLES: dict[ChangePipeline, tuple[SeriesRole, ...]] = {
    ChangePipeline.MS: (SeriesRole.T1, SeriesRole.T2),
    ChangePipeline.HAEMATOMA: (),
    ChangePipeline.TUMOUR_GROWTH: (),
    ChangePipeline.METASTASES_RESPONSE: (SeriesRole.FLAIR,),
}
# The change pipelines that follow the patients of a single-study pipeline rather than every study with their
# roles: a study goes to them only where it goes to that pipeline (its site rules; embedded: ``--pipeline``).
# Without this every glioma patient with a T1CE would also be followed as a metastases patient.
CHANGE_FOLLOWS: dict[ChangePipeline, str] = {ChangePipeline.METASTASES_RESPONSE: METASTASES_PIPELINE}
