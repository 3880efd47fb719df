"""The audit trail is append-only in the code: no statement of neuroflow updates or deletes its rows (the
contract tests show that an UPDATE or DELETE made behind neuroflow's back is detected)."""

from __future__ import annotations

import re
from pathlib import Path

from neuroflow.core.state import _WORKFLOW_TABLES

SERVICES = Path(__file__).resolve().parents[2] / "services" / "neuroflow"


def test_no_statement_in_the_services_updates_or_deletes_the_audit_trail() -> None:
    statement = re.compile(r"\b(UPDATE|DELETE\s+FROM|TRUNCATE(\s+TABLE)?|DROP\s+TABLE)\s+audit_trail\b", re.I)
    offending = [f"{path.relative_to(SERVICES)}: {match.group(0)}" for path in SERVICES.rglob("*.py")
                 for match in statement.finditer(path.read_text())]
    assert offending == []
    assert "audit_trail" not in _WORKFLOW_TABLES  # what retention deletes with a workflow
