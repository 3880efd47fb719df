"""What an earlier neuroflow glioma SR reported, read back: the whole-tumour volume that makes a prior study "a
prior with tumour" when routing decides whether a study is post-operative (ingest.postoperative), in both runtimes.
Core, because ingest (distributed) and the embedded runtime both read it and a service never imports another."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage

from neuroflow.core.identity import NEUROFLOW_MANUFACTURER
from neuroflow.core.labels import REGION_CODES

_FINDING = "121071"  # DCM "Finding": the concept of a TID 1501/1411 group's finding type item


def is_neuroflow_sr(ds: Dataset) -> bool:
    """A Comprehensive 3D SR neuroflow made (any pipeline's)."""
    return (str(ds.get("SOPClassUID", "")) == str(Comprehensive3DSRStorage)
            and str(ds.get("Manufacturer", "")) == NEUROFLOW_MANUFACTURER)


def reported_tumour_ml(sr: Dataset) -> float | None:
    """The whole-tumour volume (mL) of a neuroflow glioma SR: the number in its measurement group whose finding is
    the whole tumour (core.labels.REGION_CODES["WT"]); None for another object or a WT not measured (not
    assessable)."""
    if not is_neuroflow_sr(sr):
        return None
    wt_code = REGION_CODES["WT"][0]

    def walk(items: Sequence[Dataset]) -> float | None:
        for item in items:
            children = list(item.get("ContentSequence", []))
            if any(_is_finding(child, wt_code) for child in children):
                numbers = [float(c.MeasuredValueSequence[0].NumericValue) for c in children
                           if c.get("ValueType") == "NUM" and "MeasuredValueSequence" in c]
                return numbers[0] if numbers else None
            found = walk(children)
            if found is not None:
                return found
        return None

    return walk([sr])


def _is_finding(item: Dataset, code: str) -> bool:
    return (item.get("ValueType") == "CODE" and "ConceptNameCodeSequence" in item
            and str(item.ConceptNameCodeSequence[0].CodeValue) == _FINDING
            and str(item.ConceptCodeSequence[0].CodeValue) == code)
