"""Identities that make handlers idempotent: the same inputs are the same work, everywhere; and the
pseudonymous keys that name a study or a patient outside the site's DICOM stores.

The keys are HMAC-SHA256 with the site's secret (``NEUROFLOW_KEYS__SECRET`` or ``..._SECRET_FILE``,
core/site_secret.py): deterministic per site, so idempotency and timepoint lookups keep working, but not
recoverable by hashing candidate PatientIDs or UIDs, as an unsalted hash was. Each process of a site installs
its secret once at start (:func:`use_site_secret`); one process serves one site."""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterable, Mapping

from pydantic import SecretStr

from neuroflow.core.model_card import ModelRef
from neuroflow.core.patient_id import patient_id_problem

# The Manufacturer (0008,0070) of every object neuroflow writes: how ingest recognises its own results
# coming back through the site Orthanc (they are not new images to process).
NEUROFLOW_MANUFACTURER = "neuroflow"

# The documented development secret: what the embedded runtime and the tests key with when a site has
# configured none. The distributed runtime refuses to start on it (core/site_secret.py): anyone can read it
# here, so its keys are as guessable as an unsalted hash.
DEV_KEY_SECRET = SecretStr("neuroflow-development-key-secret-not-for-sites")
# Characters of a key: 48 bits, short enough for paths and logs; the secret, not the length, is what keeps
# a key from being reversed.
KEY_LENGTH = 12

_lock = threading.Lock()
_site_secret: bytes = DEV_KEY_SECRET.get_secret_value().encode()


def use_site_secret(secret: SecretStr) -> None:
    """Key every later :func:`study_key`, :func:`patient_key` and :func:`keyed_digest` of this process with
    ``secret`` (at start, before the first key)."""
    global _site_secret
    value = secret.get_secret_value().encode()
    if not value:
        raise ValueError("the site key secret is empty")
    with _lock:
        _site_secret = value


def keyed_digest(purpose: str, value: str) -> bytes:
    """HMAC-SHA256 of ``value`` with the site secret, separated by ``purpose`` (a study UID and a PatientID
    that happen to be equal get different keys)."""
    message = purpose.encode() + b"\x00" + value.encode()
    return hmac.new(_site_secret, message, hashlib.sha256).digest()


def study_key(study_instance_uid: str) -> str:
    """The pseudonymous key of a study in logs, metrics, messages, paths and errors: never the UID itself,
    which can identify."""
    return keyed_digest("study", study_instance_uid).hex()[:KEY_LENGTH]


def uid_key(uid: str) -> str:
    """The pseudonymous key naming a series or an instance (by its UID) in logs and error texts: the site,
    holding the secret, can match it to its UIDs; no one else learns them. Studies have ``study_key``."""
    return keyed_digest("uid", uid).hex()[:KEY_LENGTH]


def input_hash(sop_instance_uids_by_role: Mapping[str, Iterable[str]], model: ModelRef) -> str:
    """sha256 over the model and, per role, the sorted SOPInstanceUIDs of the series that fed it.

    A late instance, another series chosen for a role or another model version changes the hash (new
    work, new result UIDs); a redelivered message or a rerun does not (same result UIDs, which the
    PACS then replaces rather than duplicates). Not keyed with the site secret: result UIDs derive from it
    and must be the same in every runtime and after a secret rotation."""
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
    return keyed_digest("patient", patient_id.strip()).hex()[:KEY_LENGTH]
