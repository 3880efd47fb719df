"""The `neuroflow` command. Thin: parse arguments, build the backends from configuration, call in."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from neuroflow import __version__
from neuroflow.core.config import NeuroflowSettings
from neuroflow.core.dicom_io import FolderDicomSource

EXIT_OK = 0
EXIT_STUDY_FAILED = 1
EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # Services log what they do (with pseudonymous study keys); one-shot commands only what went wrong.
    quiet = args.command != "serve" and not args.verbose
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    result: int = args.handler(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroflow", description=__doc__)
    parser.add_argument("--version", action="version", version=f"neuroflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run the glioma pipeline on a folder of DICOM files (embedded); on two or "
                                     "more studies of one patient, the change pipelines against the prior")
    run.add_argument("input_dir", type=Path)
    run.add_argument("--out", type=Path, required=True, help="output folder (report.json, seg.dcm)")
    run.add_argument("--study", default=None, help="StudyInstanceUID, when the folder holds several")
    run.add_argument("--site-rules", type=Path, default=None, help="YAML with series classification overrides")
    run.add_argument("--quiet", action="store_true", help="no per-stage progress")
    run.add_argument("--inference", choices=("onnxruntime", "triton"), default=None,
                     help="inference backend (default: NEUROFLOW_INFERENCE__BACKEND, else onnxruntime in-process)")
    run.add_argument("--triton-url", default=None, metavar="HOST:PORT",
                     help="gRPC endpoint of the Triton Inference Server (with --inference triton)")
    run.set_defaults(handler=_cmd_run)

    classify = sub.add_parser("classify", help="print the role of every series in a folder of DICOM files")
    classify.add_argument("input_dir", type=Path)
    classify.add_argument("--site-rules", type=Path, default=None)
    classify.set_defaults(handler=_cmd_classify)

    serve = sub.add_parser("serve", help="run services of the distributed runtime until SIGINT/SIGTERM "
                                         "(backends from NEUROFLOW_* settings)")
    serve.add_argument("services", nargs="+", choices=("ingest", "orchestrator", "preprocess", "segmentation",
                                                       "results", "longitudinal", "monitor", "all"),
                       help="the service(s) to run in this process; 'all' runs every one")
    serve.set_defaults(handler=_cmd_serve)

    stack = sub.add_parser("stack", help="the local stack on loopback: Orthanc x2, Kafka, PostgreSQL, services, "
                                         "Prometheus, Alertmanager")
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument("--wait-window", type=float, default=10.0, help="seconds without new images (up)")
    stack.add_argument("--preprocess-workers", type=int, default=1, help="preprocess processes (up)")
    stack.set_defaults(handler=_cmd_stack)
    return parser


def _settings(args: argparse.Namespace) -> NeuroflowSettings:
    overrides = {"site_rules": args.site_rules} if args.site_rules else {}
    settings = NeuroflowSettings(**overrides)
    inference = {key: value for key, value in (("backend", getattr(args, "inference", None)),
                                                ("triton_url", getattr(args, "triton_url", None))) if value}
    if inference:
        settings = settings.model_copy(update={"inference": settings.inference.model_copy(update=inference)})
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    from neuroflow.runtime.embedded import run_embedded  # deferred: heavy imports only for this command

    if not args.input_dir.is_dir():
        print(f"neuroflow: error: input folder {args.input_dir} does not exist", file=sys.stderr)
        return EXIT_USAGE
    from neuroflow.core.inference_triton import TritonBackend, build_inference_backend

    settings = _settings(args)
    backend = build_inference_backend(settings)
    if isinstance(backend, TritonBackend) and not backend.server_ready():
        print(f"neuroflow: error: no ready Triton Inference Server at {backend.url} (--triton-url)", file=sys.stderr)
        return EXIT_STUDY_FAILED
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_embedded(FolderDicomSource(args.input_dir), args.out, settings, backend,
                          study_uid=args.study, progress=progress)
    if report.errors:
        for error in report.errors:
            print(f"neuroflow: error: {error}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    for warning in report.warnings:
        print(f"neuroflow: warning: {warning}", file=sys.stderr)
    volumes = report.volumes_ml
    if volumes is not None:
        print(f"study {report.study_key}: WT {volumes.WT:.1f} mL, TC {volumes.TC:.1f} mL, ET {volumes.ET:.1f} mL "
              f"in {report.timings_s['total']:.1f} s -> {args.out}")
    change = report.longitudinal
    if change is not None:
        found = [f"{change.new_lesion_count} new MS lesion(s)" if change.new_lesion_count is not None else "",
                 f"haematoma {change.haematoma.baseline_ml:.1f} -> {change.haematoma.followup_ml:.1f} mL"
                 f"{' (expansion)' if change.haematoma.expansion else ''}" if change.haematoma is not None else "",
                 "tumour growth measured" if change.tumour_growth is not None else ""]
        print(f"study {report.study_key} vs prior: {', '.join(f for f in found if f)} "
              f"in {report.timings_s['total']:.1f} s -> {args.out}")
    return EXIT_OK


def _cmd_classify(args: argparse.Namespace) -> int:
    from neuroflow.ingest.classify import classify_study, format_table
    from neuroflow.ingest.site_rules import load_site_rules

    if not args.input_dir.is_dir():
        print(f"neuroflow: error: input folder {args.input_dir} does not exist", file=sys.stderr)
        return EXIT_USAGE
    rules = load_site_rules(args.site_rules) if args.site_rules else None
    studies, skipped = FolderDicomSource(args.input_dir).index()
    for item in skipped:
        print(f"neuroflow: warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    if not studies:
        print(f"neuroflow: error: no DICOM study found in {args.input_dir}", file=sys.stderr)
        return EXIT_STUDY_FAILED
    for uid, study in sorted(studies.items()):
        print(f"Study {uid} ({len(study.series)} series)")
        print(format_table(classify_study(list(study.series.values()), rules=rules)))
        for note in study.set_aside_notes():
            print(f"  {note}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from neuroflow.runtime.distributed import SERVICES, serve  # deferred: heavy imports only for this command

    settings = NeuroflowSettings()
    if "all" in args.services:
        # Ingest follows an Orthanc's change feed: with a folder source there is nothing for it to follow.
        services = [s for s in SERVICES if s != "ingest" or settings.dicom.source == "orthanc"]
    else:
        services = list(dict.fromkeys(args.services))
    serve(services, settings)
    return EXIT_OK


def _cmd_stack(args: argparse.Namespace) -> int:
    from neuroflow.devtools import stack

    if args.action == "up":
        try:
            started = stack.up(stack.StackOptions(wait_window_s=args.wait_window,
                                                  workers={"preprocess": args.preprocess_workers}))
        except stack.StackError as exc:
            print(f"neuroflow: error: {exc}", file=sys.stderr)
            return EXIT_STUDY_FAILED
        print(f"stack up: {len(started['processes'])} processes; endpoints in {stack.STACK_FILE}")
        print(f"Prometheus {started['prometheus']}, Alertmanager {started['alertmanager']}")
        print(f"Triton gRPC {started['triton']['grpc']}, HTTP {started['triton']['http']}")
        return EXIT_OK
    if args.action == "down":
        stopped = stack.down()
        print(f"stack down: stopped {', '.join(stopped) or 'nothing (no stack running)'}")
        return EXIT_OK
    rows = stack.status()
    if not rows:
        print("no stack (run `neuroflow stack up`)")
        return EXIT_STUDY_FAILED
    for name, running, detail in rows:
        print(f"{name:<16} {'running' if running else 'NOT RUNNING':<12} {detail}")
    return EXIT_OK if all(running for _, running, _ in rows) else EXIT_STUDY_FAILED


if __name__ == "__main__":
    sys.exit(main())
