"""The ``neuroflow admin`` subcommands: parse, open the site's state database (and, to re-run, its record
store and bus) from the NEUROFLOW_* settings, call ``admin.operations``, print a table or ``--json``.

Exit status: 0 done, 1 refused (unknown id, already replayed, already delivered: nothing changed; the
reason is printed on stderr); ``audit``: 65 (EX_DATAERR) when the study's audit chain is broken."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from neuroflow.admin import operations
from neuroflow.admin.operations import AdminRefused, Store
from neuroflow.core.config import NeuroflowSettings, routed_pipelines
from neuroflow.core.exit_codes import ExitCode

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_TAMPERED = int(ExitCode.BAD_INPUT)  # the audit chain does not verify: a record was altered or removed


def add_admin_parser(sub: Any) -> None:
    """Register ``admin`` and its subcommands on the ``neuroflow`` parser's subparsers."""
    admin = sub.add_parser("admin", help="operate the distributed runtime's work: dead letters, studies, history, "
                                         "re-runs (state from NEUROFLOW_STATE__*)")
    admin.set_defaults(handler=lambda args: _usage(admin))
    commands = admin.add_subparsers(dest="admin_command")

    letters = commands.add_parser("dead-letters", help="work given up on: list, show, replay")
    letters.set_defaults(handler=lambda args: _usage(letters))
    actions = letters.add_subparsers(dest="letters_action")
    listing = actions.add_parser("list", help="dead letters waiting for an operator")
    listing.add_argument("--all", action="store_true", help="also those replayed")
    _json(listing).set_defaults(handler=_handler(lambda store, args: operations.list_dead_letters(
        store, include_replayed=args.all)))
    show = actions.add_parser("show", help="one dead letter, its workflow and whether it can be replayed")
    show.add_argument("letter_id")
    _json(show).set_defaults(handler=_handler(lambda store, args: operations.show_dead_letter(store, args.letter_id)))
    replay = actions.add_parser("replay", help="run the dead-lettered work again (never work already delivered)")
    replay.add_argument("letter_id")
    _json(replay).set_defaults(handler=_handler(lambda store, args: operations.replay_dead_letter(
        store, args.letter_id, delivery_period_s=NeuroflowSettings().delivery.retry_for_s)))

    studies = commands.add_parser("studies", help="studies with the status of each workflow per stage")
    _json(studies).set_defaults(handler=_handler(lambda store, args: operations.list_studies(store)))
    history = commands.add_parser("history", help="a study's history: transitions, attempts, deliveries")
    history.add_argument("study_key", metavar="STUDY", help="the study's pseudonymous key (see `admin studies`)")
    _json(history).set_defaults(handler=_handler(lambda store, args: operations.study_history(store, args.study_key)))
    rerun = commands.add_parser("rerun", help="run the study's latest version again, as a new workflow")
    rerun.add_argument("study_key", metavar="STUDY")
    rerun.add_argument("--pipeline", default=None, help="only this pipeline (default: each of the study's)")
    _json(rerun).set_defaults(handler=_handler(_rerun))
    cancel = commands.add_parser("cancel", help="cancel the study's unfinished or failed work: nothing more is "
                                                "dispatched or delivered")
    cancel.add_argument("study_key", metavar="STUDY")
    cancel.add_argument("--pipeline", default=None, help="only this pipeline (default: each of the study's)")
    _json(cancel).set_defaults(handler=_handler(lambda store, args: operations.cancel_study(
        store, args.study_key, args.pipeline)))
    pipelines = commands.add_parser("pipelines", help="pause and resume pipelines (new studies wait, none lost)")
    pipelines.set_defaults(handler=lambda args: _usage(pipelines))
    steps = pipelines.add_subparsers(dest="pipelines_action")
    _json(steps.add_parser("list", help="the site's pipelines, which are paused and how many studies wait")
          ).set_defaults(handler=_handler(lambda store, args: operations.list_pipelines(
              store, routed_pipelines(NeuroflowSettings().ingest.pipelines))))
    pause = steps.add_parser("pause", help="pause a pipeline: its new studies wait, a task in flight completes")
    pause.add_argument("pipeline")
    _json(pause).set_defaults(handler=_handler(lambda store, args: operations.pause_pipeline(
        store, args.pipeline, known=routed_pipelines(NeuroflowSettings().ingest.pipelines))))
    resume = steps.add_parser("resume", help="resume a pipeline: its waiting studies are dispatched")
    resume.add_argument("pipeline")
    _json(resume).set_defaults(handler=_handler(lambda store, args: operations.resume_pipeline(
        store, args.pipeline)))
    audit = commands.add_parser("audit", help="a study's audit trail (who did what, when), its hash chain verified")
    audit.add_argument("study", metavar="STUDY", help="the study's pseudonymous key or its StudyInstanceUID")
    _json(audit).set_defaults(handler=_handler(lambda store, args: operations.audit_trail(store, args.study)))


def _json(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _rerun(store: Store, args: argparse.Namespace) -> Any:
    from neuroflow.runtime.distributed import Backends  # deferred: the bus client only for this command

    backends = Backends(NeuroflowSettings())
    try:
        return operations.rerun_study(store, backends.records(), backends.bus(), args.study_key, args.pipeline)
    finally:
        backends.close()


def _handler(operation: Callable[[Store, argparse.Namespace], Any]) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        from neuroflow.runtime.distributed import Backends

        backends = Backends(NeuroflowSettings())
        try:
            result = operation(backends.state(), args)
        except AdminRefused as refused:
            print(f"neuroflow admin: refused: {refused}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            backends.close()
        print(json.dumps(result, indent=2) if args.json else _text(result))
        if isinstance(result, dict) and result.get("intact") is False:
            print(f"neuroflow admin: audit chain of study {result['study_key']} is {result['chain']}",
                  file=sys.stderr)
            return EXIT_TAMPERED
        return EXIT_OK

    return handle


def _text(result: Any) -> str:
    """A person's view: one line per row of a list, ``key: value`` lines for one record (nested lists
    indented)."""
    if isinstance(result, list):
        if not result:
            return "(none)"
        return "\n".join(_line(row) for row in result)
    return "\n".join(_lines(result))


def _line(row: dict[str, Any]) -> str:
    if "workflows" in row:  # a study: its key, then one line per workflow
        return "\n".join([row["study_key"], *(f"  {_line(w)}" for w in row["workflows"])])
    return "  ".join(f"{key}={value}" for key, value in row.items() if value not in (None, "", [], {}))


def _lines(record: dict[str, Any], indent: str = "") -> list[str]:
    lines = []
    for key, value in record.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines.append(f"{indent}{key}:")
            for item in value:
                lines.extend(_lines(item, indent + "    ") if "events" in item else [f"{indent}  - {_line(item)}"])
        else:
            lines.append(f"{indent}{key}: {value}")
    return lines
