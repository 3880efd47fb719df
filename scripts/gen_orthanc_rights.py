"""Write helm/neuroflow/files/orthanc-rights.json, the chart's copy of each service's Orthanc rights
(neuroflow.core.orthanc_rights.SERVICE_RIGHTS, the one place they are defined); a test checks it is current.

    python scripts/gen_orthanc_rights.py
"""

from __future__ import annotations

from pathlib import Path

from neuroflow.core.orthanc_rights import rights_json

TARGET = Path(__file__).resolve().parents[1] / "helm" / "neuroflow" / "files" / "orthanc-rights.json"

if __name__ == "__main__":
    TARGET.write_text(rights_json())
    print(f"wrote {TARGET}")
