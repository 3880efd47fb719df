"""Every UID neuroflow makes, under the site's UID root (``NEUROFLOW_RESULTS__UID_ROOT``).

A result UID is derived from what the result is (its kind, source series, algorithm, input hash): the same
inputs give the same UIDs in both runtimes and after a retry, so a PACS replaces rather than duplicates."""

from __future__ import annotations

from pydicom.uid import generate_uid


def derived_uid(root: str, *entropy: str) -> str:
    """A UID under ``root`` (ending in ".") that is a hash of ``entropy``: the same entropy, the same UID.
    Refuses an empty entropy (pydicom would fall back to a random UID, which breaks idempotency)."""
    if not entropy:
        raise ValueError("derived_uid needs at least one entropy source; a random UID is never idempotent")
    if not root.endswith("."):
        raise ValueError(f"a UID root ends in '.', got {root!r}")
    return str(generate_uid(prefix=root, entropy_srcs=list(entropy)))
