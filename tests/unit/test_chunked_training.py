"""Training in chunks (models/chunked_training.py), shared by the glioma and metastases trainers: a chunk's
checkpoint restores the weights, the optimiser, both random states and the chunk history, so the next chunk
goes on where the last one stopped. The schedule and the case workers are tested everywhere; the checkpoint
round trip needs PyTorch (the development environment's; CI's has none, and skips that one test)."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.chunked_training import (
    FINAL_LR_FRACTION,
    WARMUP_ITERATIONS,
    WorkerCases,
    chunk_config,
    chunk_lr,
    resume,
    save_checkpoint,
)


def _steps(model: Any, optimiser: Any, rng: np.random.Generator, n: int) -> None:
    import torch

    for _ in range(n):
        x = torch.from_numpy(rng.standard_normal((4, 3)).astype(np.float32))
        loss = (model(x) - torch.randn(4, 1)).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_the_learning_rate_warms_up_then_falls_to_its_floor_by_iterations_or_time() -> None:
    assert chunk_lr(1.0, 0, 1000, 0.0, 60.0) == pytest.approx(1.0 / WARMUP_ITERATIONS, rel=1e-3)
    assert chunk_lr(1.0, WARMUP_ITERATIONS, 1000, 0.0, 60.0) == pytest.approx(1.0, abs=1e-3)
    assert chunk_lr(1.0, 1000, 1000, 0.0, 60.0) == pytest.approx(FINAL_LR_FRACTION)
    # Half the wall budget spent after few iterations: the time decides, the cosine is at its middle.
    assert chunk_lr(1.0, 100, 1000, 30.0, 60.0) == pytest.approx((1 + FINAL_LR_FRACTION) / 2)


def test_a_resumed_chunk_starts_from_exactly_what_the_last_one_saved(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="the checkpoint round trip needs PyTorch (training only)")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(5)
    _steps(model, optimiser, rng, 3)
    first = chunk_config({"out": tmp_path, "lr": 1e-2}, [])
    save_checkpoint(tmp_path, model, optimiser, rng, 3, {**first, "next_case_seed": 17})
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    next_draw, next_torch = rng.standard_normal(), torch.randn(1)

    fresh = torch.nn.Linear(3, 1)
    fresh_optimiser = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh_rng = np.random.default_rng(99)
    torch.manual_seed(99)
    total, previous, record = resume(tmp_path / "checkpoint.pt", fresh, fresh_optimiser, fresh_rng)

    assert total == 3 and record["next_case_seed"] == 17
    assert [chunk["chunk"] for chunk in previous] == [1]
    assert chunk_config({"lr": 1e-2}, previous)["chunk"] == 2
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, saved_weights[name])
    assert fresh_rng.standard_normal() == next_draw
    assert torch.equal(torch.randn(1), next_torch)
    # Adam's moments come back (rounded to bfloat16 in the checkpoint), with its step count.
    restored = fresh_optimiser.state_dict()["state"][0]
    original = optimiser.state_dict()["state"][0]
    assert float(restored["step"]) == float(original["step"]) == 3.0
    assert torch.allclose(restored["exp_avg"], original["exp_avg"], rtol=1e-2, atol=1e-6)
    assert (tmp_path / "training.json").is_file() and not (tmp_path / "checkpoint.pt.partial").exists()


def test_cases_made_in_worker_processes_all_come_back_once() -> None:
    cases: WorkerCases[int] = WorkerCases(2, gc.collect, pow)
    try:
        for exponent in range(6):
            cases.submit(2, exponent)
        assert cases.submitted == 6
        assert cases.oldest() == 1
        deadline = time.monotonic() + 60
        taken: list[int] = []
        while len(taken) < 5 and time.monotonic() < deadline:
            taken += cases.finished()
            time.sleep(0.01)
        assert sorted(taken) == [2, 4, 8, 16, 32]  # each call returns its cases in the order they were started
        assert cases.finished() == []
    finally:
        cases.close()
