"""The chaos suite (issue 11, "Prove it"): real studies through the real local stack while faults are
injected one after another, and a count of the results in the destination PACS afterwards. The promise
checked: every study ends with exactly one result (one SEG instance) in the PACS.

The run is a series of phases. A phase writes its studies (the bundled real glioma case under new
study UIDs and made-up patients), sends them by C-STORE to the site Orthanc as a scanner would (a
refused or unanswered send is tried again, as a modality's send queue does), waits for its fault's
trigger (a study of the phase running in a given stage, or a number of studies sent), injects the fault
and undoes it, and then waits for the phase's results. A fault-free baseline phase comes first; its
latencies are what "added latency" is measured against. Studies still without a result when their phase
ends are waited for once more at the end; only then are results counted, per study, by REST.

While the run lasts, the harness plays Kubernetes: a service process that dies (killed by a fault, or
exiting on its own when a backend went away) is started again with its name, settings and metrics port, and
so is a server (PostgreSQL, an Orthanc, Kafka, Triton) that dies when no fault holds it down (e.g. killed by
the kernel when the machine runs out of memory); the table lists every such restart
(restart delay doubling from 1 s to 10 s, as a crash loop backs off), and when a service answers its
liveness endpoint (``/healthz`` on its metrics port) with an error three times in a row, it is killed and
started again, as a failed liveness probe does. A service without that endpoint is only restarted when
it dies, as under the chart's probes on ``/metrics``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import ssl
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from neuroflow.core.dicom_io import study_key
from neuroflow.core.errors import OrthancRequestFailed, OrthancUnavailable
from neuroflow.core.orthanc import OrthancClient
from neuroflow.core.roles import SeriesRole
from neuroflow.core.volume import Volume
from neuroflow.devtools import stack as stack_tools
from neuroflow.devtools.benchmarks_md import write_section
from neuroflow.devtools.cstore import CStoreFailed, send_folder
from neuroflow.devtools.dicom_writer import PatientInfo, load_volume, write_study
from neuroflow.devtools.scanner_presets import Vendor

log = logging.getLogger(__name__)

CASE = Path(__file__).resolve().parents[3] / "tests" / "data" / "glioma-tcga-du-7294"
CASE_FILES = {SeriesRole.T1: "t1_bet.nii.gz", SeriesRole.T1CE: "t1c_bet.nii.gz", SeriesRole.T2: "t2_bet.nii.gz",
              SeriesRole.FLAIR: "fla_bet.nii.gz"}
VENDORS = (Vendor.SIEMENS, Vendor.GE, Vendor.PHILIPS)
SECTION_HEADING = "## Chaos: studies through the local stack under faults (`make chaos`)"
BASELINE = "baseline (no fault)"
CANARY = "after every fault (no fault)"
SEND_DIMSE_TIMEOUT_S = 5.0
SERVERS = ("postgresql", "orthanc-site", "orthanc-pacs", "kafka", "triton")


class ChaosError(RuntimeError):
    """The harness itself could not do its part (a fault not injected, a send that never succeeded)."""


# --- studies -------------------------------------------------------------------------------------------------


@dataclass
class ChaosStudy:
    """One study of the run: where it was written, when it was sent, when its first result arrived."""

    uid: str
    folder: Path
    phase: str
    sent_at: float | None = None  # monotonic: the last instance stored at the site
    result_at: float | None = None  # monotonic: first seen in the PACS
    results: int = 0  # SEG instances in the PACS at the final count

    @property
    def key(self) -> str:
        return study_key(self.uid)

    @property
    def latency_s(self) -> float | None:
        if self.sent_at is None or self.result_at is None:
            return None
        return self.result_at - self.sent_at


class StudyFactory:
    """Real studies with distinct study UIDs and patients: the TCGA glioma case, written again for each."""

    def __init__(self, work: Path, run_tag: str) -> None:
        self._work = work
        self._tag = run_tag
        self._count = 0
        self._volumes: dict[SeriesRole, Volume] = {role: load_volume(CASE / name) for role, name in CASE_FILES.items()}

    def make(self, phase: str) -> ChaosStudy:
        self._count += 1
        n = self._count
        patient = PatientInfo(patient_id=f"NF-CHAOS-{n:04d}", name=f"CHAOS^CASE{n:04d}")
        folder = self._work / f"study-{n:03d}"
        written = write_study(self._volumes, folder, vendor=VENDORS[n % len(VENDORS)], patient=patient,
                              seed=f"chaos-{self._tag}-{n}")
        return ChaosStudy(written.study_instance_uid, folder, phase)


# --- the stack, watched and supervised ----------------------------------------------------------------------


class StackHandle:
    """A running stack shared by the supervisor, the faults and the watchers: every change to its
    process records goes through ``lock``."""

    def __init__(self, stack: dict[str, Any]) -> None:
        self.stack = stack
        self.lock = threading.RLock()

    def record(self, name: str) -> dict[str, Any]:
        with self.lock:
            return dict(stack_tools.process_record(self.stack, name))

    def services(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.stack["processes"] if "service" in p]

    def supervised(self) -> list[dict[str, Any]]:
        """The services and the servers a cluster would restart (monitoring is left out: not under test)."""
        with self.lock:
            return [dict(p) for p in self.stack["processes"] if "service" in p or p["name"] in SERVERS]

    def client(self, which: str, *, timeout_s: float = 10.0) -> OrthancClient:
        return OrthancClient(stack_tools.orthanc_endpoint(self.stack, which), timeout_s=timeout_s, retries=0)

    @property
    def dsn(self) -> str:
        return str(self.stack["postgresql"]["dsn"])


class Supervisor(threading.Thread):
    """Restarts dead service processes, and live ones that fail their liveness probe (see the module
    docstring); counts restarts per process name."""

    def __init__(self, handle: StackHandle, *, period_s: float = 1.0, probe_period_s: float = 5.0,
                 failure_threshold: int = 3, max_delay_s: float = 10.0) -> None:
        super().__init__(name="chaos-supervisor", daemon=True)
        self._handle = handle
        self._period = period_s
        self._probe_period = probe_period_s
        self._threshold = failure_threshold
        self._max_delay = max_delay_s
        self._halt = threading.Event()
        self._delay: dict[str, float] = {}
        self._dead_since: dict[str, float] = {}
        self._started_at: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._last_probe = 0.0
        self._held: set[str] = set()
        self.restarts: dict[str, int] = {}
        self.liveness_kills: dict[str, int] = {}

    @contextlib.contextmanager
    def holding(self, name: str) -> Iterator[None]:
        """Leave ``name`` alone meanwhile: a fault keeps it down on purpose."""
        with self._handle.lock:
            self._held.add(name)
        try:
            yield
        finally:
            with self._handle.lock:
                self._held.discard(name)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        while not self._halt.wait(self._period):
            try:
                self._round()
            except Exception:  # the supervisor must outlive a failed restart; it tries again next round
                log.exception("supervisor round failed")

    def _round(self) -> None:
        now = time.monotonic()
        probe = now - self._last_probe >= self._probe_period
        if probe:
            self._last_probe = now
        for record in self._handle.supervised():
            name = record["name"]
            if name in self._held:
                continue
            if not stack_tools.is_running(record):
                dead_since = self._dead_since.setdefault(name, now)
                if now - dead_since >= self._delay.get(name, 1.0):
                    self._restart(name, now)
            elif probe and "service" in record and now - self._started_at.get(name, 0.0) > 30.0:
                self._probe(record)

    def _restart(self, name: str, now: float) -> None:
        with self._handle.lock:
            if self._halt.is_set() or name in self._held:  # the stack is going down, or a fault holds it
                return
            stack_tools.restart_process(self._handle.stack, name)
        # A process that lived a minute crashed anew: its back-off starts over, as the kubelet's does.
        lived = now - self._started_at.get(name, 0.0)
        self._delay[name] = 1.0 if lived > 60.0 else min(self._max_delay, 2 * self._delay.get(name, 1.0))
        self._started_at[name] = time.monotonic()
        self._dead_since.pop(name, None)
        self.restarts[name] = self.restarts.get(name, 0) + 1
        log.info("supervisor: restarted %s", name)

    def _probe(self, record: dict[str, Any]) -> None:
        name = record["name"]
        status = _http_status(f"{stack_tools.metrics_scheme(self._handle.stack)}://127.0.0.1:{record['metrics_port']}"
                              "/healthz")
        if status is None or status < 500:  # no answer yet, or no such endpoint (404): nothing to judge
            self._failures[name] = 0
            return
        self._failures[name] = self._failures.get(name, 0) + 1
        if self._failures[name] >= self._threshold:
            log.warning("supervisor: %s failed its liveness probe %d times: killing it", name, self._threshold)
            self._failures[name] = 0
            self.liveness_kills[name] = self.liveness_kills.get(name, 0) + 1
            _kill(record["pid"])


# As the kubelet probes over HTTPS: the certificate is not checked, and no credentials are sent (the status
# code is the answer).
_PROBE_TLS = ssl.create_default_context()
_PROBE_TLS.check_hostname, _PROBE_TLS.verify_mode = False, ssl.CERT_NONE


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3.0, context=_PROBE_TLS) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it died already
        os.kill(pid, signal.SIGKILL)


class ResultWatcher(threading.Thread):
    """Polls the destination PACS for the first result of every study still waiting for one."""

    def __init__(self, handle: StackHandle, period_s: float = 2.0) -> None:
        super().__init__(name="chaos-results", daemon=True)
        self._handle = handle
        self._period = period_s
        self._studies: list[ChaosStudy] = []
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def watch(self, study: ChaosStudy) -> None:
        with self._lock:
            self._studies.append(study)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)

    def run(self) -> None:
        pacs = self._handle.client("pacs", timeout_s=5.0)
        while not self._halt.wait(self._period):
            with self._lock:
                waiting = [s for s in self._studies if s.result_at is None and s.sent_at is not None]
            for study in waiting:
                try:
                    if seg_instances(pacs, study.uid):
                        study.result_at = time.monotonic()
                except (OrthancUnavailable, OrthancRequestFailed):
                    break  # the PACS is down (a fault): try again next round


def seg_instances(pacs: OrthancClient, study_uid: str) -> list[str]:
    """The SEG instances the PACS holds for one study."""
    found = pacs.post_json("/tools/find", {"Level": "Instance",
                                           "Query": {"Modality": "SEG", "StudyInstanceUID": study_uid}})
    return [str(i) for i in found]


def workflow_stages(dsn: str, keys: Sequence[str]) -> dict[str, list[tuple[str, str, str]]]:
    """(status, stage, detail) of every workflow of each study key; {} when the state database does not
    answer (a fault may have stopped it)."""
    try:
        with psycopg.connect(dsn, connect_timeout=3) as db:
            rows = db.execute("SELECT study_key, status, coalesce(stage, ''), detail FROM workflows "
                              "WHERE study_key = ANY(%s) ORDER BY created_at", (list(keys),)).fetchall()
    except psycopg.Error:
        return {}
    out: dict[str, list[tuple[str, str, str]]] = {}
    for key, status, stage, detail in rows:
        out.setdefault(str(key), []).append((str(status), str(stage), str(detail)))
    return out


# --- triggers and faults -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """When a phase's fault goes in: once ``after_sent`` of its studies are sent, or (``stage`` set) once
    one of its studies runs in that stage; then ``delay_s`` later."""

    stage: str | None = None
    after_sent: int = 1
    delay_s: float = 0.0

    def describe(self) -> str:
        when = f"a study running in {self.stage}" if self.stage else f"{self.after_sent} studies sent"
        return when + (f" + {self.delay_s:.0f} s" if self.delay_s else "")


class Fault(ABC):
    """One fault: what the table calls it, when it goes in, and how it is done and undone."""

    label: str
    trigger: Trigger

    @property
    @abstractmethod
    def target(self) -> str:
        """The service or server it hits, as stack.json names it (without the copy number)."""

    @abstractmethod
    def inject(self, handle: StackHandle, supervisor: Supervisor) -> None:
        """Do the fault and undo it (or leave the undoing to the supervisor); return once undone."""


@dataclass(frozen=True)
class KillService(Fault):
    """SIGKILL the first process of a service, as an OOM kill or a node loss does; the supervisor starts
    it again. Returns once the replacement runs."""

    service: str
    trigger: Trigger
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", f"SIGKILL {self.service}, restarted by the supervisor")

    @property
    def target(self) -> str:
        return self.service

    def inject(self, handle: StackHandle, supervisor: Supervisor) -> None:
        victims = [p for p in handle.services() if p["service"] == self.service and stack_tools.is_running(p)]
        if not victims:
            raise ChaosError(f"no running {self.service} process to kill")
        victim = victims[0]
        _kill(victim["pid"])
        _wait_until(lambda: stack_tools.is_running(handle.record(victim["name"]))
                    and handle.record(victim["name"])["pid"] != victim["pid"], 120.0,
                    f"the supervisor to restart {victim['name']}")


@dataclass(frozen=True)
class StopServer(Fault):
    """Stop a server of the stack (its own graceful signal), keep it down ``down_s``, start it again on
    the same ports with its data."""

    process: str
    down_s: float
    trigger: Trigger
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            what = "restart" if self.down_s == 0 else f"stop for {_duration(self.down_s)}"
            object.__setattr__(self, "label", f"{what}: {self.process}")

    @property
    def target(self) -> str:
        return self.process

    def inject(self, handle: StackHandle, supervisor: Supervisor) -> None:
        with supervisor.holding(self.process):
            self._stop_and_start(handle)

    def _stop_and_start(self, handle: StackHandle) -> None:
        with handle.lock:
            stack_tools.stop_process(stack_tools.process_record(handle.stack, self.process))
        time.sleep(self.down_s)
        for attempt in range(1, 4):  # as an operator (or a StatefulSet) would, try again before giving up
            try:
                with handle.lock:
                    stack_tools.restart_process(handle.stack, self.process)
                return
            except Exception as error:  # any start failure; the last one is raised
                if attempt == 3:
                    raise ChaosError(f"{self.process} did not start again: {error}") from error
                log.warning("%s did not start again (attempt %d of 3): %s", self.process, attempt, error)
                time.sleep(5.0)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


def full_plan() -> ChaosPlan:
    """`make chaos`: every fault of issue 11, two studies each, between a fault-free baseline and a fault-free
    last phase (26 studies)."""
    return ChaosPlan(faults=full_faults())


def short_plan() -> ChaosPlan:
    """The CI variant (tests/e2e/test_chaos.py): three cheap faults, one study each, no baseline, short
    waits; a few minutes on a 2-core machine."""
    return ChaosPlan(faults=short_faults(), studies_per_phase=1, baseline=False, canary=False, wait_window_s=12.0,
                     phase_wait_s=90.0, final_wait_s=300.0, settle_s=10.0, trigger_timeout_s=180.0)


def full_faults() -> list[Fault]:
    """`make chaos`: every fault of issue 11, one after another. A worker of each kind, the orchestrator,
    then the servers; PostgreSQL last, since on code that cannot reconnect to it (defect 1) everything
    after it would be lost too and the table would blame the wrong faults."""
    return [
        KillService("ingest", Trigger(after_sent=1)),  # inside the wait window of the phase's studies
        KillService("preprocess", Trigger(stage="preprocess", delay_s=3.0)),
        KillService("segmentation", Trigger(stage="segmentation", delay_s=2.0)),
        KillService("results", Trigger(stage="results")),
        KillService("longitudinal", Trigger(stage="preprocess")),
        KillService("orchestrator", Trigger(stage="preprocess", delay_s=3.0),
                    label="SIGKILL orchestrator, restarted"),
        StopServer("orthanc-site", 0.0, Trigger(after_sent=1)),  # while the next study is being sent
        StopServer("triton", 60.0, Trigger(stage="preprocess", delay_s=2.0)),
        StopServer("orthanc-pacs", 300.0, Trigger(stage="segmentation")),
        StopServer("kafka", 0.0, Trigger(stage="preprocess", delay_s=3.0)),
        # Inside the wait window: ingest's wait-window store must carry on over the restart.
        StopServer("postgresql", 0.0, Trigger(after_sent=1)),
    ]


def short_faults() -> list[Fault]:
    """The CI variant: three cheap faults, one study each."""
    return [
        KillService("preprocess", Trigger(stage="preprocess", delay_s=3.0)),
        KillService("orchestrator", Trigger(stage="preprocess", delay_s=3.0),
                    label="SIGKILL orchestrator, restarted"),
        StopServer("orthanc-pacs", 30.0, Trigger(stage="segmentation")),
    ]


# --- the run -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChaosPlan:
    faults: list[Fault]
    studies_per_phase: int = 2
    baseline: bool = True
    # A last fault-free phase: the stack must still turn a new study into one result after every fault
    # (a service wedged by an earlier fault shows here, even when that fault's own studies got through).
    canary: bool = True
    wait_window_s: float = 15.0  # over 2x the send's DIMSE timeout (SEND_DIMSE_TIMEOUT_S)
    # A phase waits this long after its fault is undone before the next phase starts; what is still
    # missing then is waited for once more, ``final_wait_s`` at most, at the end.
    phase_wait_s: float = 180.0
    final_wait_s: float = 600.0
    settle_s: float = 20.0  # after the last result: time for a late second result to show
    trigger_timeout_s: float = 300.0
    # Stage timeouts short enough that a task lost with a process comes back within the run (the
    # defaults are 15-30 min); still over 10x what a stage takes here.
    stage_timeout_s: float = 300.0
    # More settings for every service (NEUROFLOW_...), e.g. a delivery back-off cap that fits the waits above.
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def studies(self) -> int:
        return self.studies_per_phase * (len(self.faults) + int(self.baseline) + int(self.canary))


@dataclass
class PhaseOutcome:
    label: str
    trigger: str
    studies: list[ChaosStudy]
    injected: bool = False
    note: str = ""
    restarts: dict[str, int] = field(default_factory=dict)
    fault_s: float = 0.0  # how long injecting and undoing the fault took

    @property
    def results(self) -> int:
        return sum(1 for s in self.studies if s.results >= 1)

    @property
    def lost(self) -> int:
        return sum(1 for s in self.studies if s.results == 0)

    @property
    def duplicates(self) -> int:
        """Studies with more than one result."""
        return sum(1 for s in self.studies if s.results > 1)

    def latencies(self) -> list[float]:
        return [s.latency_s for s in self.studies if s.latency_s is not None]


@dataclass
class ChaosReport:
    phases: list[PhaseOutcome]
    wall_s: float
    lost_details: dict[str, str]  # study key -> what the state database and the site Orthanc say

    @property
    def ok(self) -> bool:
        """Every fault went in, and every study has exactly one result."""
        return all((p.injected or p.label in (BASELINE, CANARY)) and p.lost == 0 and p.duplicates == 0
                   for p in self.phases)

    def baseline(self) -> PhaseOutcome | None:
        return next((p for p in self.phases if p.label == BASELINE), None)

    def added_latency(self, phase: PhaseOutcome) -> str:
        base = self.baseline()
        own = phase.latencies()
        if base is None or not base.latencies() or not own:
            return "n/a"
        median = statistics.median(own) - statistics.median(base.latencies())
        worst = max(own) - max(base.latencies())
        return f"{median:+.0f} / {worst:+.0f}"

    def table(self) -> list[str]:
        rows = ["| fault | injected when | studies | results | lost | duplicates | latency s (median / worst) "
                "| added latency s (median / worst) | supervisor restarts |",
                "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
        for p in self.phases:
            restarts = ", ".join(f"{k} {v}" for k, v in sorted(p.restarts.items())) or "-"
            injected = p.trigger if p.injected or p.label in (BASELINE, CANARY) else f"NOT INJECTED ({p.note})"
            rows.append(f"| {p.label} | {injected} | {len(p.studies)} | {p.results} | {p.lost} | {p.duplicates} "
                        f"| {_latency(p)} | {self.added_latency(p)} | {restarts} |")
        total = [s for p in self.phases for s in p.studies]
        rows.append(f"| **all** | | {len(total)} | {sum(p.results for p in self.phases)} "
                    f"| {sum(p.lost for p in self.phases)} | {sum(p.duplicates for p in self.phases)} | | | |")
        return rows


def _latency(phase: PhaseOutcome) -> str:
    own = phase.latencies()
    return f"{statistics.median(own):.0f} / {max(own):.0f}" if own else "n/a"


def run_chaos(plan: ChaosPlan, *, progress: Callable[[str], None] = print) -> ChaosReport:
    """Start a fresh local stack, run ``plan`` through it, count, stop the stack; the report says what
    happened to every study."""
    started = time.monotonic()
    with _stopped_by_signals(), tempfile.TemporaryDirectory(prefix="neuroflow-chaos-studies-") as scratch:
        factory = StudyFactory(Path(scratch), run_tag=time.strftime("%Y%m%d%H%M%S"))
        phases, lost_details = _run_on_stack(plan, factory, progress)
    return ChaosReport(phases, time.monotonic() - started, lost_details)


_INTERRUPTED = threading.Event()


@contextlib.contextmanager
def _stopped_by_signals() -> Iterator[None]:
    """SIGINT or SIGTERM ends the run with the stack stopped. The interrupt is also remembered, since a
    KeyboardInterrupt that lands inside a database driver's call can come out as that driver's error
    (and be taken for a stopped database); every wait of the run checks it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        _INTERRUPTED.set()
        raise KeyboardInterrupt(f"signal {signum}")

    _INTERRUPTED.clear()
    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_on_stack(plan: ChaosPlan, factory: StudyFactory, progress: Callable[[str], None]) -> tuple[
        list[PhaseOutcome], dict[str, str]]:
    timeouts = {s: plan.stage_timeout_s for s in ("preprocess", "segmentation", "results", "longitudinal")}
    options = stack_tools.StackOptions(
        wait_window_s=plan.wait_window_s,
        extra_env={"ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", "OMP_NUM_THREADS": "1",
                   "NEUROFLOW_ORCHESTRATION__STAGE_TIMEOUT_S": json.dumps(timeouts), **plan.extra_env})
    progress("chaos: starting the local stack")
    with stack_tools.temporary(options, prefix="neuroflow-chaos-") as running:
        stack_tools.use_stack_key_secret(running)  # the triggers find a study's workflow by its key
        handle = StackHandle(running)
        supervisor = Supervisor(handle)
        watcher = ResultWatcher(handle)
        supervisor.start()
        watcher.start()
        # The supervisor stops before the stack does: it would otherwise restart what `down` stops.
        try:
            phases: list[PhaseOutcome] = []
            steps: list[tuple[str, Fault | None]] = [(BASELINE, None)] if plan.baseline else []
            steps += [(f.label, f) for f in plan.faults]
            steps += [(CANARY, None)] if plan.canary else []
            for label, fault in steps:
                phases.append(_run_phase(plan, label, fault, handle, supervisor, watcher, factory, progress))
            everything = [s for p in phases for s in p.studies]
            progress(f"chaos: waiting for the last results ({sum(1 for s in everything if s.result_at is None)} "
                     "missing)")
            _wait_until(lambda: all(s.result_at is not None for s in everything), plan.final_wait_s, "", quiet=True)
            time.sleep(plan.settle_s)
            lost_details = _count(handle, everything)
        finally:
            supervisor.stop()
            watcher.stop()
        progress("chaos: stopping the local stack")
    return phases, lost_details


def _run_phase(plan: ChaosPlan, label: str, fault: Fault | None, handle: StackHandle, supervisor: Supervisor,
               watcher: ResultWatcher, factory: StudyFactory, progress: Callable[[str], None]) -> PhaseOutcome:
    studies = [factory.make(label) for _ in range(plan.studies_per_phase)]
    outcome = PhaseOutcome(label, fault.trigger.describe() if fault else "-", studies)
    restarts_before, liveness_before = dict(supervisor.restarts), dict(supervisor.liveness_kills)
    progress(f"chaos: phase '{label}': sending {len(studies)} studies")
    for study in studies:
        watcher.watch(study)
    sender = _Sender(handle, studies)
    sender.start()
    if fault is not None:
        fired = _wait_for_trigger(fault.trigger, handle, sender, studies, plan.trigger_timeout_s)
        if fired:
            progress(f"chaos: phase '{label}': injecting ({fault.trigger.describe()})")
            began = time.monotonic()
            try:
                fault.inject(handle, supervisor)
                outcome.injected = True
            except ChaosError as error:  # the table says so; the run goes on, on whatever is left
                outcome.note = f"injection failed: {error}"
                progress(f"chaos: phase '{label}': {outcome.note}")
            outcome.fault_s = time.monotonic() - began
        else:
            outcome.note = f"trigger not met within {plan.trigger_timeout_s:.0f} s"
            progress(f"chaos: phase '{label}': {outcome.note}")
    sender.join()
    if sender.error:
        outcome.note = (outcome.note + "; " if outcome.note else "") + sender.error
    _wait_until(lambda: all(s.result_at is not None for s in studies), plan.phase_wait_s, "", quiet=True)
    # The next phase must start on a whole stack: a process the supervisor is still bringing back would
    # otherwise count against the next fault.
    _wait_until(lambda: all(stack_tools.is_running(p) for p in handle.supervised()), 120.0, "", quiet=True)
    outcome.restarts = _grown(restarts_before, supervisor.restarts)
    killed = _grown(liveness_before, supervisor.liveness_kills)
    if killed:
        outcome.note = "; ".join([*filter(None, [outcome.note]),
                                  "failed liveness: " + ", ".join(f"{k} {v}" for k, v in sorted(killed.items()))])
    done = sum(1 for s in studies if s.result_at is not None)
    progress(f"chaos: phase '{label}': {done}/{len(studies)} results so far")
    return outcome


def _grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


class _Sender(threading.Thread):
    """A scanner's send queue: each study in turn by C-STORE, a failed send tried again (storing is
    idempotent) every few seconds for up to ten minutes."""

    def __init__(self, handle: StackHandle, studies: list[ChaosStudy], give_up_s: float = 600.0) -> None:
        super().__init__(name="chaos-sender", daemon=True)
        self._site = handle.stack["orthanc"]["site"]
        self._studies = studies
        self._give_up = give_up_s
        self.sent = 0
        self.error = ""

    def run(self) -> None:
        site = self._site
        for study in self._studies:
            deadline = time.monotonic() + self._give_up
            while True:
                try:
                    # A lost C-STORE answer (see cstore.py) stalls the send for the DIMSE timeout: kept well
                    # under the wait window, or the study is taken as complete while it is still arriving.
                    send_folder(study.folder, site["dicom_host"], site["dicom_port"], site["aet"],
                                dimse_timeout_s=SEND_DIMSE_TIMEOUT_S)
                    break
                except (CStoreFailed, OSError, RuntimeError) as error:
                    if time.monotonic() > deadline:
                        self.error = f"study {study.key} never sent: {error}"
                        return
                    time.sleep(2.0)
            study.sent_at = time.monotonic()
            self.sent += 1
            shutil.rmtree(study.folder, ignore_errors=True)  # 70 MB each; the site Orthanc has it now


def _wait_for_trigger(trigger: Trigger, handle: StackHandle, sender: _Sender, studies: list[ChaosStudy],
                      timeout_s: float) -> bool:
    keys = [s.key for s in studies]

    def met() -> bool:
        if trigger.stage is None:
            return sender.sent >= trigger.after_sent
        stages = workflow_stages(handle.dsn, keys)
        return any(status == "RUNNING" and stage == trigger.stage
                   for rows in stages.values() for status, stage, _ in rows)

    if not _wait_until(met, timeout_s, "", quiet=True, period_s=0.5):
        return False
    time.sleep(trigger.delay_s)
    return True


def _count(handle: StackHandle, studies: list[ChaosStudy]) -> dict[str, str]:
    """Set every study's final result count; for each study without exactly one, what the state
    database and the site Orthanc know of it."""
    pacs = handle.client("pacs", timeout_s=30.0)
    site = handle.client("site", timeout_s=30.0)
    for study in studies:
        study.results = len(seg_instances(pacs, study.uid))
    odd = [s for s in studies if s.results != 1]
    stages = workflow_stages(handle.dsn, [s.key for s in odd])
    details: dict[str, str] = {}
    for study in odd:
        found = site.post_json("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study.uid}})
        flows = "; ".join(f"{status} at {stage or '-'}{': ' + detail[:200] if detail else ''}"
                          for status, stage, detail in stages.get(study.key, [])) or "no workflow"
        details[study.key] = (f"{study.phase}: {study.results} results; {len(found)} instances at the site; "
                              f"workflows: {flows}")
    return details


def _wait_until(condition: Callable[[], bool], timeout_s: float, what: str, *, quiet: bool = False,
                period_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if _INTERRUPTED.is_set():
            raise KeyboardInterrupt("the chaos run was interrupted")
        if condition():
            return True
        if time.monotonic() > deadline:
            if quiet:
                return False
            raise ChaosError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(period_s)


# --- the report ----------------------------------------------------------------------------------------------


def markdown_section(plan: ChaosPlan, report: ChaosReport, *, command: str) -> str:
    """The BENCHMARKS.md section of a run."""
    lines = [
        SECTION_HEADING,
        "",
        f"Written by `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}); "
        f"{report.wall_s / 60:.0f} min on this machine. The local stack (PostgreSQL, site Orthanc, destination "
        "PACS Orthanc, Kafka, Triton, one process per service); per phase "
        f"{plan.studies_per_phase} real studies (TCGA-DU-7294 under new study UIDs and patients) sent by "
        f"C-STORE, then the fault injected when its trigger is met; wait window {plan.wait_window_s:.0f} s, "
        f"stage timeouts {plan.stage_timeout_s:.0f} s. The harness restarts a dead service as Kubernetes "
        "would. Results are counted per study (SEG instances in the destination PACS, by REST) "
        f"{plan.settle_s:.0f} s after the last one arrived or {plan.final_wait_s / 60:.0f} min after the last "
        "phase. Added latency: first result minus last instance sent, against the fault-free baseline.",
        "",
        *report.table(),
        "",
        f"**{'PASS' if report.ok else 'FAIL'}**: "
        + ("every fault went in and every study has exactly one result." if report.ok
           else "a fault was not injected, or studies were lost or duplicated (below)."),
        "",
    ]
    if report.lost_details:
        lines += ["Studies without exactly one result (pseudonymous key):", ""]
        lines += [f"- `{key}` {detail}" for key, detail in sorted(report.lost_details.items())]
        lines.append("")
    lines += ["Reproduce: `make chaos` (or `.venv/bin/python scripts/chaos.py`; `--short` is the CI variant).", ""]
    return "\n".join(lines)


def write_benchmarks(path: Path, plan: ChaosPlan, report: ChaosReport, *, command: str) -> None:
    write_section(path, markdown_section(plan, report, command=command))
