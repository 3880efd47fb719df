"""Exit codes of every ``neuroflow`` command, defined once. A scheduler (cron, Airflow, a Kubernetes Job)
decides from the code alone whether to try again: 75 means "later", 65 means "not until the input is fixed".
The values are those of BSD's sysexits.h, which schedulers and mail systems already know."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2  # bad arguments or a missing input folder (argparse's own code for usage errors)
    BAD_INPUT = 65  # EX_DATAERR: the study was refused (unreadable, over the input limits, a series missing)
    INTERNAL = 70  # EX_SOFTWARE: a defect in neuroflow; the same input would fail again
    TEMPORARY = 75  # EX_TEMPFAIL: a service was unavailable (Triton, Orthanc, the PACS): try again later


def describe() -> str:
    """The codes as one line per code, for ``--help``."""
    meanings = {
        ExitCode.OK: "success",
        ExitCode.USAGE: "usage error (bad arguments, input folder missing)",
        ExitCode.BAD_INPUT: "bad input: the study was refused; retrying will not help until it is fixed",
        ExitCode.INTERNAL: "internal error (a defect in neuroflow)",
        ExitCode.TEMPORARY: "temporary failure (inference server, Orthanc or PACS unavailable): retry later",
    }
    return "\n".join(f"  {code.value:>3}  {meanings[code]}" for code in ExitCode)
