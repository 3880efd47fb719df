"""`make chaos`: real studies through the local stack while faults are injected one after another; every
study must end with exactly one result in the destination PACS. Writes its table to BENCHMARKS.md and
exits 1 on any lost or duplicated result (see neuroflow.devtools.chaos)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from neuroflow.devtools.chaos import full_plan, markdown_section, run_chaos, short_plan, write_benchmarks

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--short", action="store_true", help="the CI variant: 3 studies, 3 cheap faults")
    parser.add_argument("--studies-per-phase", type=int, default=None, help="studies sent with each fault")
    parser.add_argument("--faults", default="",
                        help="only these faults, by the process they hit (comma-separated, e.g. kafka,triton)")
    parser.add_argument("--out", type=Path, default=None,
                        help="BENCHMARKS.md to write the table into (default: the repository's, full run only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # a line per instance sent otherwise
    plan = short_plan() if args.short else full_plan()
    if args.studies_per_phase:
        plan = replace(plan, studies_per_phase=args.studies_per_phase)
    if args.faults:
        wanted = set(args.faults.split(","))
        plan = replace(plan, faults=[f for f in plan.faults if f.target in wanted])
        if not plan.faults:
            parser.error(f"no fault hits {args.faults}")
    report = run_chaos(plan, progress=lambda line: print(line, flush=True))
    command = "scripts/chaos.py --short" if args.short else "make chaos"
    section = markdown_section(plan, report, command=command)
    print(section)
    out = args.out if args.out or args.short else ROOT / "BENCHMARKS.md"
    if out:
        write_benchmarks(out, plan, report, command=command)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
