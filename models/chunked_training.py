"""What the trainers of the shipped networks share: training in chunks that stop on a time or iteration budget
or a signal and resume exactly where they stopped (weights, Adam state, numpy and torch random states, the
settings of every chunk so far), a learning rate that warms up and follows a cosine over each chunk so every
chunk ends on weights fit to export, checkpoints small enough to commit and written atomically, and weights
read back from an exported ``model.onnx``.

A checkpoint holds ``state_dict`` (on the CPU: it loads on any machine, whichever device trained),
``optimizer`` (Adam's moments in bfloat16), ``numpy_rng``, ``torch_rng``, ``iterations_total`` and
``config`` (this chunk's settings, with ``previous_chunks``).

PyTorch is imported where a checkpoint is read or written: the schedule and the case workers load without it
(CI's environment has none, and tests them)."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

WARMUP_ITERATIONS = 20
FINAL_LR_FRACTION = 0.05
Case = TypeVar("Case")


def chunk_lr(peak: float, done: int, chunk_iterations: int, elapsed_s: float, budget_s: float) -> float:
    """The learning rate of iteration ``done`` of a chunk: a warm-up over WARMUP_ITERATIONS, then a cosine from
    ``peak`` down to FINAL_LR_FRACTION of it over the chunk, by iterations or wall time, whichever runs out
    first."""
    progress = min(max(done / chunk_iterations, elapsed_s / budget_s), 1.0)
    cosine = FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))
    return peak * cosine * min(1.0, (done + 1) / WARMUP_ITERATIONS)


class StopRequest:
    """SIGTERM and SIGINT end the chunk after the current step (its checkpoint is then saved): ``signal``
    names the one received, empty until then."""

    def __init__(self) -> None:
        self.signal = ""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum).name


class WorkerCases(Generic[Case]):
    """Training cases made in ``workers`` processes, each set up once by ``initializer`` (loading its brains),
    by ``make(*args)``: on a GPU one step takes milliseconds and a case seconds, so synthesis must not hold up
    training. ``submit`` starts a case, ``finished`` takes those done (in the order they were submitted),
    ``oldest`` waits for the first still pending; ``submitted`` counts every case started."""

    def __init__(self, workers: int, initializer: Callable[[], None], make: Callable[..., Case]) -> None:
        self._executor = ProcessPoolExecutor(workers, initializer=initializer)
        self._make = make
        self._pending: list[Future[Case]] = []
        self.submitted = 0

    def submit(self, *args: Any) -> None:
        self._pending.append(self._executor.submit(self._make, *args))
        self.submitted += 1

    def oldest(self) -> Case:
        return self._pending.pop(0).result()

    def finished(self) -> list[Case]:
        done = [future for future in self._pending if future.done()]
        for future in done:
            self._pending.remove(future)
        return [future.result() for future in done]

    def close(self) -> None:
        self._executor.shutdown(cancel_futures=True)


def weights_from_onnx(path: Path) -> dict[str, torch.Tensor]:
    """The weights of an exported ``model.onnx`` (its initializers keep the PyTorch parameter names)."""
    import onnx
    import torch
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}


def load_initial_weights(model: torch.nn.Module, path: Path) -> None:
    """Weights only (a new chunk series from them): a checkpoint or an exported ``model.onnx``."""
    import torch

    if path.suffix == ".onnx":
        model.load_state_dict(weights_from_onnx(path))
    else:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])


def resume(path: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
           rng: np.random.Generator) -> tuple[int, list[dict[str, Any]], dict[str, Any]]:
    """Restore a checkpoint into ``model``, ``optimiser``, ``rng`` and torch's random state. Returns the
    iterations done in all, the settings of every chunk so far (the next chunk's ``previous_chunks``) and the
    saved chunk's own record (what a trainer kept beside its settings, e.g. how many cases it made)."""
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(saved["state_dict"])
    optimiser.load_state_dict(_expand_optimiser_state(saved["optimizer"]))
    rng.bit_generator.state = saved["numpy_rng"]
    torch.set_rng_state(saved["torch_rng"])
    record = saved["config"]
    previous = [*record.get("previous_chunks", []), {k: v for k, v in record.items() if k != "previous_chunks"}]
    return int(saved["iterations_total"]), previous, record


def chunk_config(args: dict[str, Any], previous: list[dict[str, Any]]) -> dict[str, Any]:
    """This chunk's settings as the checkpoint keeps them: paths as text, its number, the chunks before it."""
    config: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items()}
    config.update(chunk=len(previous) + 1, previous_chunks=previous,
                  started_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return config


def save_checkpoint(out: Path, model: torch.nn.Module, optimiser: torch.optim.Optimizer, rng: np.random.Generator,
                    total: int, record: dict[str, Any]) -> None:
    """``out/checkpoint.pt`` (replaced atomically: a kill while saving leaves the previous one) and
    ``out/training.json`` (``record``: the chunk's settings and figures)."""
    import torch

    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    checkpoint = {"state_dict": weights, "optimizer": _compact_optimiser_state(optimiser.state_dict()),
                  "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                  "iterations_total": total, "config": record}
    partial = out / "checkpoint.pt.partial"
    torch.save(checkpoint, partial)
    partial.replace(out / "checkpoint.pt")
    summary = {k: v for k, v in record.items() if k != "previous_chunks"}
    summary["previous_chunks"] = record.get("previous_chunks", [])
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")


def _compact_optimiser_state(state: dict[str, Any]) -> dict[str, Any]:
    """Adam moments as bfloat16: the checkpoint stays small enough to commit (about 2.8 MB for the glioma
    network); resuming from rounded moments changes the next steps negligibly."""
    import torch

    out: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for key, value in state["state"].items():
        out["state"][key] = {k: (v.to("cpu", torch.bfloat16) if torch.is_tensor(v) and v.dim() > 0 else
                                 v.cpu() if torch.is_tensor(v) else v)
                             for k, v in value.items()}
    return out


def _expand_optimiser_state(state: dict[str, Any]) -> dict[str, Any]:
    import torch

    for value in state["state"].values():
        for k, v in value.items():
            if torch.is_tensor(v) and v.dtype == torch.bfloat16:
                value[k] = v.to(torch.float32)
    return state
