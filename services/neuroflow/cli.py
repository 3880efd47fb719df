"""The `neuroflow` command. Thin: parse arguments, build the backends from configuration, call in."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from neuroflow import __version__
from neuroflow.admin.cli import add_admin_parser
from neuroflow.core.config import GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE, NeuroflowSettings
from neuroflow.core.dicom_io import FolderDicomSource
from neuroflow.core.exit_codes import ExitCode, describe

log = logging.getLogger("neuroflow.cli")


def configure_logging(level: int) -> None:
    """neuroflow's loggers at ``level``; every other library's at WARNING at most: their INFO lines name
    DICOM UIDs (highdicom logs the SOPInstanceUID of each source image), ours name studies by key."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(max(level, logging.WARNING))
    logging.getLogger("neuroflow").setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    # Services log what they do (with pseudonymous study keys); one-shot commands only what went wrong.
    level = logging.INFO if verbose or (args.command == "serve" and not quiet) else (
        logging.ERROR if quiet else logging.WARNING)
    configure_logging(level)
    if args.command is None:
        parser.print_help()
        return ExitCode.USAGE
    try:
        return int(args.handler(args))
    except Exception as exc:  # the last line of defence: a scheduler must still tell retry from bad input
        from neuroflow.core.errors import NeuroflowError
        from neuroflow.core.worker import is_retryable

        if not isinstance(exc, NeuroflowError):
            log.exception("neuroflow %s failed unexpectedly", args.command)
            return ExitCode.INTERNAL
        print(f"neuroflow: error: {exc}", file=sys.stderr)
        return ExitCode.TEMPORARY if is_retryable(exc) else ExitCode.BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neuroflow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="exit codes:\n" + describe())
    parser.add_argument("--version", action="version", version=f"neuroflow {__version__}")
    _add_log_options(parser, default=False)
    sub = parser.add_subparsers(dest="command", parser_class=_Subcommand)

    run = sub.add_parser("run", help="run the glioma pipeline on a folder of DICOM files (embedded); on two or "
                                     "more studies of one patient, the change pipelines against the prior",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="exit codes:\n" + describe())
    run.add_argument("input_dir", type=Path)
    run.add_argument("--out", type=Path, required=True, help="output folder (report.json, seg.dcm)")
    run.add_argument("--study", default=None, help="StudyInstanceUID, when the folder holds several")
    run.add_argument("--site-rules", type=Path, default=None, help="YAML with series classification overrides")
    run.add_argument("--inference", choices=("onnxruntime", "triton"), default=None,
                     help="inference backend (default: NEUROFLOW_INFERENCE__BACKEND, else onnxruntime in-process)")
    run.add_argument("--triton-url", default=None, metavar="HOST:PORT",
                     help="gRPC endpoint of the Triton Inference Server (with --inference triton)")
    run.add_argument("--pipeline", choices=(GLIOMA_PIPELINE, GLIOMA_POSTOP_PIPELINE, METASTASES_PIPELINE),
                     default=None,
                     help="run this pipeline on the study (default: routing decides; glioma unless the site "
                          "enables only metastases, glioma_postop for a study its descriptions call "
                          "post-operative); metastases on several studies of one patient: their lesion-wise "
                          "follow-up (RANO-BM)")
    run.set_defaults(handler=_cmd_run)

    classify = sub.add_parser("classify", help="print the role of every series in a folder of DICOM files")
    classify.add_argument("input_dir", type=Path)
    classify.add_argument("--site-rules", type=Path, default=None)
    classify.add_argument("--json", action="store_true", help="print the studies and their series as JSON")
    classify.set_defaults(handler=_cmd_classify)

    serve = sub.add_parser("serve", help="run services of the distributed runtime until SIGINT/SIGTERM "
                                         "(backends from NEUROFLOW_* settings)")
    serve.add_argument("services", nargs="+", choices=("ingest", "orchestrator", "preprocess", "segmentation",
                                                       "results", "longitudinal", "monitor", "all", "console"),
                       help="the service(s) to run in this process; 'all' runs every one but the console, "
                            "'console' (the browser console, NEUROFLOW_CONSOLE__*) runs alone")
    serve.set_defaults(handler=_cmd_serve)

    deidentify = sub.add_parser("deidentify", help="de-identify a folder of DICOM files (PS3.15 Basic Profile, "
                                                   "full dates kept) before they leave the site")
    deidentify.add_argument("input_dir", type=Path)
    deidentify.add_argument("--out", type=Path, required=True, help="output folder of the de-identified files")
    deidentify.set_defaults(handler=_cmd_deidentify)

    stack = sub.add_parser("stack", help="the local stack on loopback: Orthanc x2, Kafka, PostgreSQL, services, "
                                         "Prometheus, Alertmanager")
    stack.add_argument("action", choices=("up", "down", "status"))
    stack.add_argument("--wait-window", type=float, default=10.0, help="seconds without new images (up)")
    stack.add_argument("--preprocess-workers", type=int, default=1, help="preprocess processes (up)")
    stack.set_defaults(handler=_cmd_stack)

    add_admin_parser(sub)
    return parser


class _Subcommand(argparse.ArgumentParser):
    """The parser of a subcommand (and of its own subcommands): takes -v/-q too, so they may follow it
    (`neuroflow run DIR --out O -v`). Their default is SUPPRESS: a subcommand given neither leaves what was
    given before it (`neuroflow -v run ...`) alone."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _add_log_options(self, default=argparse.SUPPRESS)


def _add_log_options(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log at INFO level")
    parser.add_argument("-q", "--quiet", action="store_true", default=default,
                        help="log errors only; `run`: no per-stage progress either")


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
        return ExitCode.USAGE
    from neuroflow.core.inference_triton import TritonBackend, build_inference_backend

    settings = _settings(args)
    backend = build_inference_backend(settings)
    if isinstance(backend, TritonBackend) and not backend.server_ready():
        print(f"neuroflow: error: no ready Triton Inference Server at {backend.url} (--triton-url)", file=sys.stderr)
        return ExitCode.TEMPORARY
    progress = None if getattr(args, "quiet", False) else (lambda line: print(line, file=sys.stderr, flush=True))
    report = run_embedded(FolderDicomSource(args.input_dir, limits=settings.limits), args.out, settings, backend,
                          study_uid=args.study, progress=progress, pipeline=args.pipeline)
    if report.errors:
        for error in report.errors:
            print(f"neuroflow: error: {error}", file=sys.stderr)
        return ExitCode.TEMPORARY if report.retryable else ExitCode.BAD_INPUT
    for warning in report.warnings:
        print(f"neuroflow: warning: {warning}", file=sys.stderr)
    if report.metastases is not None:
        mets = report.metastases
        print(f"study {report.study_key}: {mets.count} metastasis(es), {mets.total_volume_ml * 1000.0:.0f} mm3 "
              f"in {report.timings_s['total']:.1f} s -> {args.out}")
    volumes = report.volumes_ml
    if volumes is not None:
        print(f"study {report.study_key}: WT {volumes.WT:.1f} mL, TC {volumes.TC:.1f} mL, ET {volumes.ET:.1f} mL "
              f"in {report.timings_s['total']:.1f} s -> {args.out}")
    change = report.longitudinal
    if change is not None:
        found = [f"{change.new_lesion_count} new MS lesion(s)" if change.new_lesion_count is not None else "",
                 f"haematoma {change.haematoma.baseline_ml:.1f} -> {change.haematoma.followup_ml:.1f} mL"
                 f"{' (expansion)' if change.haematoma.expansion else ''}" if change.haematoma is not None else "",
                 "tumour growth measured" if change.tumour_growth is not None else "",
                 _response_line(change.metastases_response) if change.metastases_response is not None else ""]
        print(f"study {report.study_key} vs prior: {', '.join(f for f in found if f)} "
              f"in {report.timings_s['total']:.1f} s -> {args.out}")
    return ExitCode.OK


def _response_line(response: Any) -> str:
    flagged = response.review is not None and response.review.needs_review
    return f"metastases RANO-BM {response.rano_bm.category.value}{' (NEEDS REVIEW)' if flagged else ''}"


def _cmd_classify(args: argparse.Namespace) -> int:
    from neuroflow.core.site_secret import install_site_secret
    from neuroflow.ingest.classify import classify_study, effective_policy, format_table
    from neuroflow.ingest.site_rules import load_site_rules

    if not args.input_dir.is_dir():
        print(f"neuroflow: error: input folder {args.input_dir} does not exist", file=sys.stderr)
        return ExitCode.USAGE
    rules = load_site_rules(args.site_rules) if args.site_rules else None
    settings = _settings(args)
    install_site_secret(settings, distributed=False)  # study keys as the site's runtime computes them
    studies, skipped = FolderDicomSource(args.input_dir, limits=settings.limits).index()
    log.info("indexed %s: %d studies, %d files skipped", args.input_dir, len(studies), len(skipped))
    for item in skipped:
        print(f"neuroflow: warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    policy = effective_policy(settings.classify, rules)
    classified = {uid: classify_study(list(study.series.values()), rules=rules, policy=policy)
                  for uid, study in sorted(studies.items())}
    if args.json:
        print(json.dumps(_classification_json(classified, skipped), indent=2))
    if not studies:
        print(f"neuroflow: error: no DICOM study found in {args.input_dir}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    if not args.json:
        for uid, series in classified.items():
            print(f"Study {uid} ({len(studies[uid].series)} series)")
            print(format_table(series))
            for note in studies[uid].set_aside_notes():
                print(f"  {note}")
    return ExitCode.OK


def _classification_json(classified: dict[str, list[Any]], skipped: list[Any]) -> dict[str, Any]:
    """`classify --json`: each study (UID and pseudonymous key) with its series' classifications, and the
    files skipped with their reasons."""
    import dataclasses

    from neuroflow.core.dicom_io import study_key

    return {
        "studies": [{"study_instance_uid": uid, "study_key": study_key(uid),
                     "series": [{**dataclasses.asdict(c), "role": str(c.role), "ambiguous": c.is_ambiguous}
                                for c in series]}
                    for uid, series in classified.items()],
        "skipped": [{"path": str(item.path), "reason": item.reason} for item in skipped],
    }


def _cmd_serve(args: argparse.Namespace) -> int:
    from neuroflow.runtime.distributed import SERVICES, serve  # deferred: heavy imports only for this command

    settings = NeuroflowSettings()
    if "console" in args.services:
        if len(set(args.services)) > 1:
            print("neuroflow: error: serve console runs alone (a process of its own)", file=sys.stderr)
            return ExitCode.USAGE
        from neuroflow.console.service import serve_console
        from neuroflow.core.site_secret import MissingSiteSecret
        try:
            serve_console(settings)
        except MissingSiteSecret as exc:
            print(f"neuroflow: error: {exc}", file=sys.stderr)
            return ExitCode.USAGE
        return ExitCode.OK
    if "all" in args.services:
        # Ingest follows an Orthanc's change feed: with a folder source there is nothing for it to follow.
        services = [s for s in SERVICES if s != "ingest" or settings.dicom.source == "orthanc"]
    else:
        services = list(dict.fromkeys(args.services))
    from neuroflow.core.site_secret import MissingSiteSecret
    try:
        serve(services, settings)
    except MissingSiteSecret as exc:
        print(f"neuroflow: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK


def _cmd_deidentify(args: argparse.Namespace) -> int:
    from neuroflow.deid.cli import deidentify_command

    return deidentify_command(args.input_dir, args.out, NeuroflowSettings())


def _cmd_stack(args: argparse.Namespace) -> int:
    from neuroflow.devtools import stack

    if args.action == "up":
        try:
            started = stack.up(stack.StackOptions(wait_window_s=args.wait_window,
                                                  workers={"preprocess": args.preprocess_workers}))
        except stack.StackError as exc:
            print(f"neuroflow: error: {exc}", file=sys.stderr)
            return ExitCode.TEMPORARY
        print(f"stack up: {len(started['processes'])} processes; endpoints in {stack.STACK_FILE}")
        print(f"Prometheus {started['prometheus']}, Alertmanager {started['alertmanager']}")
        print(f"Triton gRPC {started['triton']['grpc']}, HTTP {started['triton']['http']}")
        print(f"Console {started['console']['url']} (dev users and passwords: {started['console']['passwords_file']})")
        return ExitCode.OK
    if args.action == "down":
        stopped = stack.down()
        print(f"stack down: stopped {', '.join(stopped) or 'nothing (no stack running)'}")
        return ExitCode.OK
    rows = stack.status()
    if not rows:
        print("no stack (run `neuroflow stack up`)")
        return ExitCode.TEMPORARY
    for name, running, detail in rows:
        print(f"{name:<16} {'running' if running else 'NOT RUNNING':<12} {detail}")
    return ExitCode.OK if all(running for _, running, _ in rows) else ExitCode.TEMPORARY


if __name__ == "__main__":
    sys.exit(main())
