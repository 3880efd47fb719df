"""``neuroflow deidentify IN_DIR --out OUT_DIR``: settings in, a folder de-identified, a line per problem."""

from __future__ import annotations

import sys
from pathlib import Path

from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.exit_codes import ExitCode
from neuroflow.core.identity import DEV_KEY_SECRET
from neuroflow.core.site_secret import MISSING_SECRET, configured_secret
from neuroflow.deid.deidentify import Deidentifier
from neuroflow.deid.export import deidentify_folder
from neuroflow.deid.reidentification import ReidentificationMap


def deidentify_command(in_dir: Path, out_dir: Path, settings: NeuroflowSettings) -> int:
    """De-identify ``in_dir`` into ``out_dir`` with the site's secret; refuses to run without one (or with the
    public development secret): pseudonyms keyed with a known secret can be reversed by trying PatientIDs."""
    secret = configured_secret(settings)
    if secret is None or secret.get_secret_value() == DEV_KEY_SECRET.get_secret_value():
        print(f"neuroflow: error: {MISSING_SECRET}", file=sys.stderr)
        return ExitCode.USAGE
    if not in_dir.is_dir():
        print(f"neuroflow: error: input folder {in_dir} does not exist", file=sys.stderr)
        return ExitCode.USAGE
    reid_map = ReidentificationMap(settings.deid.map_path)
    try:
        summary = deidentify_folder(in_dir, out_dir, Deidentifier(secret, reid_map))
    except ValueError as exc:
        print(f"neuroflow: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    finally:
        reid_map.close()
    for path, reason in summary.skipped:
        print(f"neuroflow: warning: skipped {path}: {reason}", file=sys.stderr)
    print(f"de-identified {len(summary.written)} file(s) -> {out_dir}; re-identification map: "
          f"{settings.deid.map_path} (keep it at the site)")
    # Nothing written: every file was refused as it is (bad input).
    return ExitCode.OK if summary.written else ExitCode.BAD_INPUT
