"""What the console's pages show, read from the workflow state (through admin.operations, which the CLI
uses too), the reports the results worker wrote, and the review decisions. Plain data: the templates
render it. Studies are named by their pseudonymous key; no UID reaches a page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from neuroflow.admin import operations
from neuroflow.admin.operations import Row, Store
from neuroflow.core.reviews import Decision, ReviewDecision, ReviewStore
from neuroflow.core.state import WorkflowStatus
from neuroflow.results.report import REPORT_FILE, StudyReport

NEEDS_REVIEW = "NEEDS REVIEW"
PIPELINE_PAUSED = "PIPELINE PAUSED"  # a study waiting for its paused pipeline to be resumed
REJECTED = "REJECTED"
ACCEPTED = "accepted"
WORKLIST_LIMIT = 300  # the newest studies shown; the CLI (`neuroflow admin studies`) lists all


@dataclass
class WorklistFilter:
    status: str = ""  # a WorkflowStatus value, or "" for any
    pipeline: str = ""

    def keeps(self, workflow: Row) -> bool:
        return ((not self.status or workflow["status"] == self.status)
                and (not self.pipeline or workflow["pipeline"] == self.pipeline))


@dataclass
class Worklist:
    studies: list[Row]
    pipelines: list[str]
    statuses: list[str] = field(default_factory=lambda: [s.value for s in WorkflowStatus])


def read_report(reports_dir: Path, study_key: str, workflow_id: str) -> StudyReport | None:
    """The workflow's report.json, None while there is none (or it cannot be read: the page says so)."""
    path = reports_dir / study_key / workflow_id / REPORT_FILE
    try:
        return StudyReport.model_validate_json(path.read_text())
    except (OSError, ValidationError, ValueError):
        return None


def model_label(report: StudyReport | None) -> str:
    """The model as the metrics name it (name/version)."""
    return f"{report.model.name}/{report.model.version}" if report is not None and report.model else "unknown"


def worklist(store: Store, reviews: ReviewStore, reports_dir: Path, selection: WorklistFilter) -> Worklist:
    """Every study (newest first) with its workflows: status, stages and their times, the failure's reason
    (the dead letter's, else the workflow's detail), flags (needs review, the review's decision)."""
    studies = operations.list_studies(store)
    pipelines = sorted({w["pipeline"] for s in studies for w in s["workflows"]})
    letters = {letter["workflow_id"]: letter for letter in operations.list_dead_letters(store)}
    decisions = reviews.latest_by_workflow()
    paused = store.paused_pipelines()
    shown = []
    for study in sorted(studies, key=lambda s: max(w["updated_at"] for w in s["workflows"]), reverse=True):
        workflows = [w for w in study["workflows"] if selection.keeps(w)]
        if not workflows:
            continue
        for workflow in workflows:
            workflow["flags"] = _flags(workflow, reports_dir, study["study_key"], decisions)
            if workflow["status"] == WorkflowStatus.PENDING.value and workflow["pipeline"] in paused:
                workflow["flags"].append(PIPELINE_PAUSED)
            workflow["reason"] = _reason(workflow, letters.get(workflow["workflow_id"]))
        shown.append({"study_key": study["study_key"], "workflows": workflows,
                      "updated_at": max(w["updated_at"] for w in workflows)})
        if len(shown) >= WORKLIST_LIMIT:
            break
    return Worklist(shown, pipelines)


def _flags(workflow: Row, reports_dir: Path, study_key: str, decisions: dict[str, Decision]) -> list[str]:
    flags = []
    decision = decisions.get(workflow["workflow_id"])
    if decision == Decision.REJECTED:
        flags.append(REJECTED)
    elif decision == Decision.ACCEPTED:
        flags.append(ACCEPTED)
    elif workflow["status"] == WorkflowStatus.SUCCEEDED.value:
        report = read_report(reports_dir, study_key, workflow["workflow_id"])
        if report is not None and report.review is not None and report.review.needs_review:
            flags.append(NEEDS_REVIEW)
    return flags


def _reason(workflow: Row, letter: Row | None) -> str:
    if workflow["status"] not in (WorkflowStatus.FAILED.value, WorkflowStatus.DEAD_LETTERED.value):
        return ""
    if letter is not None:
        return f"{letter['stage']}: {letter['reason']} ({letter['code']}, after {letter['attempts']} attempt(s))"
    return str(workflow["detail"])


@dataclass
class StudyPage:
    study_key: str
    workflows: list[Row]  # as ``admin history`` gives them, each with its report and decisions
    timeline: list[Row]
    chain: str
    reviews: list[ReviewDecision]


def study_page(store: Store, reviews: ReviewStore, reports_dir: Path, study_key: str, viewer: str) -> StudyPage:
    """One study: its workflows as ``neuroflow admin history`` shows them (events, deliveries, dead letters),
    each with its report and review decisions, and its audit trail as the timeline. Reading it is recorded in
    that trail (``viewer``: who read it)."""
    trail = store.audit_records(study_key)  # before the reading is recorded: the next view shows it
    check = store.audit_verify(study_key)
    history = operations.study_history(store, study_key, actor=viewer)
    decided = reviews.of_study(study_key)
    for row in history["workflows"]:
        report = read_report(reports_dir, study_key, row["workflow_id"])
        row["report"] = _report_view(report)
        row["model"] = model_label(report)
        row["reviews"] = [d for d in decided if d.workflow_id == row["workflow_id"]]
        row["decision"] = row["reviews"][-1].decision.value if row["reviews"] else None
        row["retractions"] = [{"destination": r.destination, "status": r.status.value, "last_error": r.last_error}
                              for r in store.retractions(workflow_id=row["workflow_id"])]
        row["corrections"] = [{"destination": c.destination, "status": c.status.value, "last_error": c.last_error}
                              for c in store.corrections(workflow_id=row["workflow_id"])]
    return StudyPage(study_key, history["workflows"],
                     [{"at": r.at, "action": r.action, "actor": r.actor, "detail": _detail_text(r.fields())}
                      for r in trail],
                     "intact" if check.intact else f"BROKEN at record {check.broken_at}: {check.problem}", decided)


def _detail_text(detail: Any) -> str:
    if not isinstance(detail, dict):
        return str(detail)
    return ", ".join(f"{k}: {v}" for k, v in detail.items() if v not in (None, "", [], {}))


def _report_view(report: StudyReport | None) -> Row | None:
    """What a page shows of a report: the series chosen for each role and why (no UIDs), the volumes, the
    review flag, what could not be assessed, warnings and errors."""
    if report is None:
        return None
    volumes = report.volumes_ml.model_dump() if report.volumes_ml is not None else {}
    return {
        "status": report.status.value,
        "series": [{"number": s.series_number, "description": s.description, "role": str(s.role),
                    "used_as": str(s.used_as) if s.used_as else "", "confidence": s.confidence,
                    "reasons": s.reasons} for s in report.series],
        "volumes": {k: v for k, v in volumes.items() if isinstance(v, int | float)},
        # What a radiologist may keep or remove: the regions the model drew (the shells follow from them).
        "components": list(type(report.volumes_ml).model_fields) if report.volumes_ml is not None else [],
        "model": str(report.model) if report.model else "",
        "review": report.review.model_dump() if report.review is not None else None,
        "not_assessable": report.not_assessable,
        "warnings": report.warnings,
        "errors": report.errors,
        "timings": report.timings_s,
    }
