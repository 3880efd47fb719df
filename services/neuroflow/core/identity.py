"""Identities that make handlers idempotent: the same inputs are the same work, everywhere."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from neuroflow.core.model_card import ModelRef
from neuroflow.core.patient_id import patient_id_problem

# The Manufacturer (0008,0070) of every object neuroflow writes: how ingest recognises its own results
# coming back through the site Orthanc (they are not new images to process).
NEUROFLOW_MANUFACTURER = "neuroflow"


def input_hash(sop_instance_uids_by_role: Mapping[str, Iterable[str]], model: ModelRef) -> str:
    """sha256 over the model and, per role, the sorted SOPInstanceUIDs of the series that fed it.

    A late instance, another series chosen for a role or another model version changes the hash (new
    work, new result UIDs); a redelivered message or a rerun does not (same result UIDs, which the
    PACS then replaces rather than duplicates)."""
    h = hashlib.sha256(f"{model.name}:{model.version}".encode())
    for role in sorted(sop_instance_uids_by_role):
        h.update(b"\x00" + role.encode() + b"\x00")
        for uid in sorted(sop_instance_uids_by_role[role]):
            h.update(uid.encode() + b"\x01")
    return h.hexdigest()


def patient_key(patient_id: str) -> str | None:
    """The pseudonymous key of the patient with ``patient_id``, which groups a patient's timepoints; None
    when the PatientID cannot identify a patient (``patient_id_problem``): studies without a usable
    PatientID must never share one key."""
    if patient_id_problem(patient_id) is not None:
        return None
    return hashlib.sha256(patient_id.strip().encode()).hexdigest()[:12]
