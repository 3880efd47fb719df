"""Triton Python-backend model: runs this version's ``model.onnx`` with ONNX Runtime.

The CPU variant of every model in the Triton repository (neuroflow.core.triton_repository copies this
file into each version folder). The tensor names are the ONNX model's, which are the model card's, so a
client cannot tell this variant from the TensorRT one. Requests the dynamic batcher hands over together
are run as one ONNX Runtime batch when their shapes agree.

Tensors cross with DLPack (``np.from_dlpack``, ``Tensor.from_dlpack``), not ``as_numpy()`` and
``Tensor(name, array)``: the stub of nvidia-pytriton 0.7.0 was built against numpy 1 and reads numpy 2's
arrays wrongly (inputs came back as one repeated value; outputs were sent as zero bytes, "output tensor
shape does not match size"). Through DLPack the bytes are right; the
stub renames the used capsule to "used_dlpack", so numpy's capsule destructor reports a harmless
"PyCapsule_GetPointer called with incorrect name" (the stub frees the tensor itself) as an unraisable
exception; that one message is kept out of the server's log, every other one still goes there.

The backend stub embeds CPython but ignores PYTHONPATH: the folders that hold numpy and onnxruntime are
named in NEUROFLOW_TRITON_SITE_PACKAGES (set by neuroflow.devtools.triton_server) and added here.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

for _folder in os.environ.get("NEUROFLOW_TRITON_SITE_PACKAGES", "").split(os.pathsep):
    if _folder and _folder not in sys.path:
        sys.path.append(_folder)

import numpy as np  # noqa: E402  (after the sys.path set-up above)
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

_report_unraisable = sys.unraisablehook


def _skip_used_dlpack_capsules(unraisable: Any) -> None:
    if "PyCapsule_GetPointer called with incorrect name" in str(unraisable.exc_value):
        return
    _report_unraisable(unraisable)


sys.unraisablehook = _skip_used_dlpack_capsules


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        threads = int(config.get("parameters", {}).get("intra_op_threads", {}).get("string_value", "0"))
        if threads:
            options.intra_op_num_threads = threads
        # The CUDA provider where onnxruntime-gpu is installed on a GPU machine; the CPU otherwise.
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self._session = ort.InferenceSession(str(path), options, providers=providers)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = []
        for request in requests:
            feeds.append({name: np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name))
                          for name in self._inputs})
        responses: list[Any] = [None] * len(requests)
        # Group requests whose inputs have the same shapes (beyond the batch axis): each group is one run.
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for n, feed in enumerate(feeds):
            groups.setdefault(tuple(feed[name].shape[1:] for name in self._inputs), []).append(n)
        for members in groups.values():
            try:
                joined = {name: np.concatenate([feeds[n][name] for n in members]) for name in self._inputs}
                results = self._session.run(self._outputs, joined)
            except Exception as exc:  # a bad request fails its own responses, never the server
                for n in members:
                    responses[n] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for n in members:
                size = len(feeds[n][self._inputs[0]])
                tensors = [pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(result[start:start + size]))
                           for name, result in zip(self._outputs, results, strict=True)]
                responses[n] = pb_utils.InferenceResponse(output_tensors=tensors)
                start += size
        return responses
