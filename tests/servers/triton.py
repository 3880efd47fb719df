"""A real tritonserver for the tests: the binary of PyPI's nvidia-pytriton (fetched once into the
neuroflow cache by neuroflow.devtools.triton_server), on free loopback ports, stopped by its PID.

``triton_server`` (once per session, a few seconds) serves the CPU variant (Python backend over ONNX
Runtime) of the contract suite's tiny model and of the real glioma U-Net of models/repository;
``triton_models`` is the model repository it was built from (model cards included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from neuroflow.core.config import DEFAULT_MODEL_REPOSITORY
from neuroflow.core.triton_repository import ServingOptions, build_repository
from neuroflow.devtools.triton_server import TritonProcess, TritonServerTls, start_triton
from tests.servers.tiny_model import TINY, write_model

SERVED_REAL_MODELS = ("glioma_unet", "metastases_unet")


@dataclass(frozen=True)
class TritonServer:
    process: TritonProcess
    models: Path  # the model repository (cards, ONNX files) the Triton repository was built from

    @property
    def url(self) -> str:
        return self.process.grpc_url


@contextlib.contextmanager
def running_triton(source: Path, folder: Path, *, options: ServingOptions | None = None,
                   tls: TritonServerTls | None = None) -> Iterator[TritonProcess]:
    """tritonserver serving the CPU variant of every model in ``source`` until the block ends (over TLS,
    with restricted protocols, when ``tls`` is given)."""
    build_repository(source, folder / "triton-repository", "cpu",
                     options=options or ServingOptions(intra_op_threads=1))
    server = start_triton(folder / "triton-repository", folder / "tritonserver.log", tls=tls)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    root = tmp_path_factory.mktemp("triton")
    models = root / "models"
    write_model(models, TINY)
    for name in SERVED_REAL_MODELS:  # linked, not copied: the cards and ONNX files stay the repository's
        (models / name).symlink_to(DEFAULT_MODEL_REPOSITORY / name, target_is_directory=True)
    with running_triton(models, root) as process:
        yield TritonServer(process, models)
