"""Triton's gRPC endpoint as the shared tier runs it, on a real tritonserver: TLS with client certificates
(mutual TLS) and the operator's protocols (model repository, shared memory, trace, logging) restricted to
requests carrying the admin header. Proved here: a client that verifies the server against the CA (and
presents its certificate) infers; a plaintext client, a client trusting another CA and a client without a
certificate get nothing; a model-repository call without the header is refused, with it answered; plain
HTTP answers health and nothing else."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from neuroflow.core.config import InferenceSettings
from neuroflow.core.errors import InferenceUnavailable
from neuroflow.core.inference_triton import TritonBackend, TritonTls
from neuroflow.devtools.certificates import IssuedCertificate, make_authority
from neuroflow.devtools.triton_server import GRPC_ADMIN_HEADER, TritonProcess, client_certificate, stack_triton_tls
from tests.servers.tiny_model import TINY, write_model
from tests.servers.triton import running_triton

IMAGE = np.arange(2 * 4 * 4 * 4, dtype=np.float32).reshape(1, 2, 4, 4, 4)


@dataclass(frozen=True)
class SecuredTriton:
    process: TritonProcess
    models: Path
    ca: Path
    client: IssuedCertificate
    admin_key: str

    @property
    def client_files(self) -> tuple[Path, Path]:
        return self.client.certificate, self.client.private_key


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredTriton]:
    root = tmp_path_factory.mktemp("triton-tls")
    write_model(root / "models", TINY)
    tls = stack_triton_tls(root, make_authority(root / "ca"), mutual=True)
    with running_triton(root / "models", root, tls=tls) as process:
        yield SecuredTriton(process, root / "models", tls.ca, client_certificate(root), tls.admin_key)


def _backend(server: SecuredTriton, tls: TritonTls | None) -> TritonBackend:
    return TritonBackend(server.process.grpc_url, server.models, timeout_s=10, retries=0, tls=tls)


def test_a_client_verifying_the_ca_with_its_certificate_infers(secured: SecuredTriton) -> None:
    backend = _backend(secured, TritonTls(secured.ca, *secured.client_files))
    assert backend.server_ready() and backend.ready(TINY)
    np.testing.assert_array_equal(backend.infer(TINY, {"image": IMAGE})["scaled"], 2 * IMAGE + 1)


def test_the_server_name_checked_can_differ_from_the_address_dialled(secured: SecuredTriton) -> None:
    # The certificate names 127.0.0.1 and localhost: dialling the address and checking "localhost" works,
    # checking a name the certificate does not hold fails.
    named = _backend(secured, TritonTls(secured.ca, *secured.client_files, "localhost"))
    assert named.server_ready()
    wrong = _backend(secured, TritonTls(secured.ca, *secured.client_files, "triton.elsewhere"))
    assert not wrong.server_ready()


def test_plaintext_other_ca_and_certificateless_clients_get_nothing(secured: SecuredTriton, tmp_path: Path) -> None:
    other_ca = make_authority(tmp_path / "another-ca", "another CA")
    for tls in (None, TritonTls(other_ca.certificate, *secured.client_files), TritonTls(secured.ca)):
        backend = _backend(secured, tls)
        assert not backend.server_ready()
        with pytest.raises(InferenceUnavailable, match="unreachable"):
            backend.infer(TINY, {"image": IMAGE})


def test_model_repository_calls_need_the_admin_header(secured: SecuredTriton) -> None:
    creds = TritonTls(secured.ca, *secured.client_files).credentials()
    client = grpcclient.InferenceServerClient(secured.process.grpc_url, creds=creds)
    with pytest.raises(InferenceServerException, match=GRPC_ADMIN_HEADER):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match=GRPC_ADMIN_HEADER):
        client.unload_model(TINY.name)
    index = client.get_model_repository_index(headers={GRPC_ADMIN_HEADER: secured.admin_key}, as_json=True)
    assert TINY.name in [m["name"] for m in index["models"]]
    with pytest.raises(InferenceServerException, match=GRPC_ADMIN_HEADER):
        client.get_model_repository_index(headers={GRPC_ADMIN_HEADER: "guessed"})
    assert client.is_model_ready(TINY.name, str(TINY.version))  # unloading was refused: still served


def test_plain_http_answers_health_only(secured: SecuredTriton) -> None:
    base = f"http://{secured.process.http_url}"
    with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10) as answer:
        assert answer.status == 200
    for path in (f"/v2/models/{TINY.name}", "/v2/repository/index"):
        request = urllib.request.Request(f"{base}{path}", method="GET" if "models" in path else "POST")
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(request, timeout=10)


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="go together"):
        InferenceSettings(triton_tls=True, triton_cert_file=Path("client.crt"))
    with pytest.raises(ValueError, match=r"need inference\.triton_tls"):
        InferenceSettings(triton_ca_file=Path("ca.crt"))
