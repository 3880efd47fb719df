"""scripts/bench_gpu.py runs on a lent GPU machine that has PyTorch but not SimpleITK, and its section of
BENCHMARKS.md is what the capacity model reads its GPU figure from: both are checked here, without a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_the_gpu_bench_imports_without_simpleitk() -> None:
    # The GPU machine has no SimpleITK wheel within its transfer limit: a module of the bench's import chain
    # that starts importing it breaks the GPU run, which no CPU test would otherwise notice. PyTorch is blocked
    # too: CI's venv has none (make venv does not install it), and the report and capacity-model tests below
    # import the bench there, so a module-level torch import fails CI even where a developer's venv has torch.
    blocker = ("import sys\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('SimpleITK', 'torch'):\n"
               "            raise ImportError(name + ' is blocked')\n"
               "sys.meta_path.insert(0, Block())\n"
               f"sys.argv = ['bench_gpu.py', '--help']\n"
               "import runpy\n"
               f"runpy.run_path({str(ROOT / 'scripts' / 'bench_gpu.py')!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "services")}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: bench_gpu.py" in done.stdout


def results(**changes: object) -> dict[str, object]:
    patch = {"onnxruntime cpu (16 cores)": {"batch 1 ms": 40.0, "batch 4 ms": 150.0},
             "onnxruntime cuda": {"reason": "no CUDA provider"},
             "pytorch fp16": {"batch 1 ms": 2.0, "batch 4 ms": 5.0}}
    study = {"onnxruntime cpu (16 cores)": {"seconds": 3.0, "gpu_peak_mib": 0.0},
             "pytorch fp16": {"seconds": 0.25, "gpu_peak_mib": 900.0, "max_abs_diff": 2e-3,
                              "dice": {"WT": 0.999, "TC": 0.998, "ET": 1.0}},
             "pytorch fp16 compiled": {"reason": "failed here: BackendCompilerFailed"}}
    base: dict[str, object] = {
        "identity": {"gpu": "NVIDIA H200", "compute_capability": "9.0", "memory_gib": "140", "driver": "580",
                     "torch": "2.11", "cuda": "13.0", "cpu_cores": "16", "python": "3.12"},
        "written": "2026-12-04 18:00 UTC", "repeats": 20, "study_repeats": 3, "patch_size": 96,
        "per_patch": {"glioma_unet:2": patch}, "patches_per_study": 27, "per_study": study,
        "throughput_backend": "pytorch fp16", "throughput": {1: 14000.0, 4: 30000.0}, "capacity_inference_s": 0.25}
    return {**base, **changes}


def test_the_section_names_every_backend_with_its_figure_or_the_reason_it_was_not_measured() -> None:
    bench = load_script("bench_gpu")
    text = bench.section(results())
    assert text.startswith(bench.SECTION)
    assert "| pytorch fp16 | 2.00 (20x) | 5.00 (30x) | 500 |" in text
    assert "| onnxruntime cuda | not measured: no CUDA provider |" in text
    assert "| pytorch fp16 | 0.25 | 12.0x | 900 | 2.0e-03 | 0.9990 / 0.9980 / 1.0000 |" in text
    assert "| pytorch fp16 compiled | not measured: failed here: BackendCompilerFailed |" in text
    assert "4 client(s) 30000 studies/h" in text
    assert "**Triton** on this GPU, the same clients: not measured: no Triton server" in text
    measured = bench.section(results(triton_throughput={2: 9000.0}))
    assert "**Triton** on this GPU, the same clients: 2 client(s) 9000 studies/h." in measured


@pytest.mark.parametrize("seconds", [0.25, 1.5])
def test_the_capacity_model_reads_the_gpu_time_the_section_writes(seconds: float) -> None:
    bench, capacity = load_script("bench_gpu"), load_script("capacity_model")
    text = (ROOT / "BENCHMARKS.md").read_text()
    without = "\n".join(line for line in text.splitlines() if not line.startswith("GPU model inference per study"))
    written = without + "\n\n" + bench.section(results(capacity_inference_s=seconds))
    assert capacity.read_timings(written).gpu_inference_s == pytest.approx(seconds)
