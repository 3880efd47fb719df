"""A service imports the core, never another service (ARCHITECTURE.md), so each can be deployed and
changed on its own. The one exception is written down here, with its reason: the longitudinal stage
compares two timepoints with the SAME preprocessing, segmentation and result objects as the glioma
pipeline (issue 6: it "builds on the embedded pipeline"), and reusing them is what keeps the two
runtimes' answers identical. (The DICOM-to-volume conversion, which the results stage and the console's
viewer share with preprocessing so an overlay pixel lies where the SEG's voxel does, is core:
core.series_volume.) The console (the staff's web application) reads what the services produce: a study's
report (results), its series classified as the pipeline saw them (ingest); no service imports the console
(what both need, such as the review decisions, lives in the core). Any other cross-service import fails
this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICES_ROOT = Path(__file__).resolve().parents[2] / "services" / "neuroflow"
SERVICES = ("ingest", "orchestrator", "preprocess", "segmentation", "longitudinal", "results", "monitor", "console")
ALLOWED: dict[str, frozenset[str]] = {
    "longitudinal": frozenset({"preprocess", "segmentation", "results"}),
    "console": frozenset({"ingest", "results"}),
}


def _imported_services(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    parts = (name.split(".") for name in names)
    return {p[1] for p in parts if len(p) > 1 and p[0] == "neuroflow" and p[1] in SERVICES}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_the_core_and_its_documented_exceptions(service: str) -> None:
    allowed = ALLOWED.get(service, frozenset()) | {service}
    offending = {
        str(path.relative_to(SERVICES_ROOT)): sorted(imported - allowed)
        for path in sorted((SERVICES_ROOT / service).rglob("*.py"))
        if (imported := _imported_services(path)) - allowed
    }
    assert not offending, f"{service} imports other services: {offending}"


def test_the_check_sees_a_cross_service_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from neuroflow.results.report import StudyReport\nimport neuroflow.core.volume\n")
    assert _imported_services(module) == {"results"}


def test_the_core_imports_no_service() -> None:
    """The core is what services share; a core module importing a service would tie every service to it
    (core/lesions.py once lived in segmentation, and core/labels.py imported it from there)."""
    offending = {str(path.relative_to(SERVICES_ROOT)): sorted(imported)
                 for path in sorted((SERVICES_ROOT / "core").rglob("*.py"))
                 if (imported := _imported_services(path))}
    assert not offending, f"core modules importing services: {offending}"
