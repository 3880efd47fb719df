"""Fuzz the DICOM input path (index, classify, read, convert) with mutated files; see
services/neuroflow/devtools/dicom_fuzz.py. Exits 1 when any case crashed, hung, ran out of memory or raised
an exception that is not neuroflow's refusal; writes its BENCHMARKS.md section (--out) only after a complete run."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.dicom_fuzz import FINDINGS, FuzzOptions, fuzz, markdown_section, regenerate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=FuzzOptions.count, help="mutated files to generate")
    parser.add_argument("--seed", type=int, default=FuzzOptions.seed)
    parser.add_argument("--timeout", type=float, default=FuzzOptions.timeout_s, help="seconds per case")
    parser.add_argument("--memory-mb", type=int, default=FuzzOptions.memory_mb, help="child address-space limit")
    parser.add_argument("--out", type=Path, default=None, help="BENCHMARKS.md to write the section to")
    parser.add_argument("--findings", type=Path, default=None, help="write the findings as JSON here")
    parser.add_argument("--case", type=int, default=None, help="only write case N of the run to --case-dir")
    parser.add_argument("--case-dir", type=Path, default=Path("fuzz-case"))
    args = parser.parse_args()
    options = FuzzOptions(count=args.count, seed=args.seed, timeout_s=args.timeout, memory_mb=args.memory_mb)
    with tempfile.TemporaryDirectory(prefix="neuroflow-fuzz-") as work:
        if args.case is not None:
            print(f"case {args.case}: {regenerate(options, args.case, args.case_dir, Path(work))} -> {args.case_dir}")
            return 0
        result = fuzz(options, Path(work), progress=lambda line: print(line, file=sys.stderr, flush=True))
    section = markdown_section(options, result)
    print(section)
    for finding in result.findings:
        print(json.dumps(finding), file=sys.stderr)
    if args.findings is not None:
        args.findings.write_text(json.dumps(result.findings, indent=2))
    if args.out is not None:
        write_section(args.out, section)
    return 1 if any(result.outcomes[k] for k in FINDINGS) else 0


if __name__ == "__main__":
    sys.exit(main())
