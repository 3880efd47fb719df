"""Export the two pretrained deepbet networks (TorchScript, deepbet 1.0.2, MIT) to ONNX, once.

deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI using Convolutional Neural
Networks", Computers in Biology and Medicine 2024; https://github.com/wwu-mmll/deepbet) ships two traced
LinkNet3d networks in its wheel:

* ``data/models/bbox_model.pt``: finds the brain's bounding box on the whole head at 128^3;
* ``data/models/model.pt``: segments the brain in that box resampled to 256^3.

Both take ``[batch, 1, D, H, W]`` and return the softmax ``[batch, 2, D, H, W]`` (background, brain).
They are fully convolutional with five stride-2 stages, so every spatial size divisible by 32 works; the
ONNX graphs keep batch and the three spatial axes dynamic.

ONNX Runtime's float32 InstanceNormalization kernel accumulates its mean and variance in float32; over a
256^3 volume that alone moved the brain probability by up to 1.3e-2 against TorchScript (96 voxels
changed side of 0.5), while TorchScript float32 stays within 1e-5 of float64. Every
InstanceNormalization is therefore rewritten as the same arithmetic with its statistics taken in
float64 (``_instance_norm_in_float64``), which brings ONNX Runtime within 1e-5 at the same speed.

The check runs deepbet's own preprocessing (its ``normalize`` and bounding-box code, imported from the
wheel) on Colin27 to build the exact inputs deepbet would feed, runs TorchScript and ONNX Runtime on
them and reports the largest absolute difference of the brain probability; the export is refused when
it exceeds ``--tolerance``.

Run (torch is only needed here, never in services/)::

    /tmp/trainvenv/bin/python models/deepbet/export.py --deepbet-dir /tmp/whl/deepbet_x
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

REPOSITORY = Path(__file__).resolve().parents[1] / "repository"
COLIN27_HEAD = Path("/usr/share/mricron/templates/ch2.nii.gz")
OPSET = 17
# (file in the wheel, model name in the repository, working size deepbet runs it at)
NETWORKS = (
    ("bbox_model.pt", "deepbet_bbox", (128, 128, 128)),
    ("model.pt", "deepbet", (256, 256, 256)),
)
_DYNAMIC = {0: "batch", 2: "depth", 3: "height", 4: "width"}


def export(scripted: torch.jit.ScriptModule, example: torch.Tensor, path: Path, description: str) -> None:
    """Write ``scripted`` as ONNX (opset 17) with input ``image`` and output ``probabilities``, its
    instance normalisations computed with float64 statistics."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".raw.onnx")
    # The TorchScript exporter: the dynamo exporter cannot take a ScriptModule loaded from disk.
    torch.onnx.export(
        scripted, (example,), str(raw), input_names=["image"], output_names=["probabilities"],
        opset_version=OPSET, dynamic_axes={"image": _DYNAMIC, "probabilities": _DYNAMIC}, dynamo=False,
    )
    model = _instance_norm_in_float64(onnx.load(str(raw)))
    raw.unlink()
    model.doc_string = description
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _instance_norm_in_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace each InstanceNormalization by y = (x - mean) / sqrt(var + eps) * scale + bias with mean
    and var over the spatial axes computed in float64, then cast back to float32."""
    graph = model.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    constants.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t)
                      for n in graph.node if n.op_type == "Constant"})
    nodes: list[onnx.NodeProto] = []
    for k, node in enumerate(graph.node):
        if node.op_type != "InstanceNormalization":
            nodes.append(node)
            continue
        x, scale, bias = node.input
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        p = f"instance_norm_{k}_"
        graph.initializer.append(numpy_helper.from_array(np.array(eps, dtype=np.float64), p + "eps"))
        normalised = p + "normalised"
        nodes += [
            helper.make_node("Cast", [x], [p + "x"], to=TensorProto.DOUBLE),
            helper.make_node("ReduceMean", [p + "x"], [p + "mean"], axes=[2, 3, 4], keepdims=1),
            helper.make_node("Sub", [p + "x", p + "mean"], [p + "centred"]),
            helper.make_node("Mul", [p + "centred", p + "centred"], [p + "squared"]),
            helper.make_node("ReduceMean", [p + "squared"], [p + "var"], axes=[2, 3, 4], keepdims=1),
            helper.make_node("Add", [p + "var", p + "eps"], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "sd"]),
            helper.make_node("Div", [p + "centred", p + "sd"], [p + "z"]),
            helper.make_node("Cast", [p + "z"], [normalised], to=TensorProto.FLOAT),
        ]
        gamma, beta = constants[scale].astype(np.float32), constants[bias].astype(np.float32)
        if np.all(gamma == 1) and np.all(beta == 0):  # deepbet's InstanceNorm3d has no affine part
            nodes[-1].output[0] = node.output[0]
            continue
        graph.initializer.extend([
            numpy_helper.from_array(gamma.reshape(1, -1, 1, 1, 1), p + "gamma"),
            numpy_helper.from_array(beta.reshape(1, -1, 1, 1, 1), p + "beta"),
        ])
        nodes += [
            helper.make_node("Mul", [normalised, p + "gamma"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "beta"], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    # Constants that only fed the replaced nodes are dropped so ONNX Runtime does not warn about them.
    used = {i for n in graph.node for i in n.input}
    kept = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(kept)
    return model


def deepbet_inputs(bet_module: object, bbox_model: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """The normalised inputs deepbet's ``BrainExtraction.run_model`` feeds both networks on Colin27,
    built with deepbet's own functions (canonical RAS array, nearest-exact resampling, quantiles)."""
    from deepbet.bet import BrainExtraction  # type: ignore[import-not-found]
    from deepbet.utils import keep_largest_connected_component, normalize  # type: ignore[import-not-found]

    x = torch.from_numpy(nib.as_closest_canonical(nib.load(COLIN27_HEAD)).get_fdata(dtype=np.float32))
    x = torch.nan_to_num(x)
    small = F.interpolate(x[None, None], NETWORKS[0][2], mode="nearest-exact")[0, 0]
    low, high = small.quantile(0.005), small.quantile(0.995)
    bbox_input = normalize(small, low, high)[None, None]
    with torch.no_grad():
        mask_small = bbox_model(bbox_input)[0, 1]
    mask_small = keep_largest_connected_component((mask_small > 0.5).float().numpy())
    bbox = BrainExtraction.get_bbox_with_margin(bet_module, torch.from_numpy(mask_small), x.shape, 0.1)
    crop = F.interpolate(x[bbox][None, None], NETWORKS[1][2], mode="nearest-exact")[0, 0]
    return {"deepbet_bbox": bbox_input, "deepbet": normalize(crop, low, high)[None, None]}


def max_abs_diff(scripted: torch.jit.ScriptModule, path: Path, image: torch.Tensor) -> dict[str, float]:
    """Largest |TorchScript - ONNX Runtime| of the brain probability on ``image``, and how many voxels
    change side of the 0.5 threshold."""
    with torch.no_grad():
        expected = scripted(image)[:, 1].numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"image": image.numpy()})[0][:, 1]
    return {
        "max_abs_diff": float(np.abs(expected - got).max()),
        "threshold_flips": int(((expected > 0.5) != (got > 0.5)).sum()),
        "voxels": int(expected.size),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--deepbet-dir", type=Path, required=True,
                        help="the unpacked deepbet 1.0.2 wheel (holds deepbet/ and data/models/)")
    parser.add_argument("--repository", type=Path, default=REPOSITORY)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args()
    sys.path.insert(0, str(args.deepbet_dir))
    torch.set_num_threads(2)

    scripted = {name: torch.jit.load(str(args.deepbet_dir / "data" / "models" / file)).eval()
                for file, name, _ in NETWORKS}
    # deepbet's get_bbox_with_margin is an instance method that only calls the static get_bbox.
    from deepbet.bet import BrainExtraction

    inputs = deepbet_inputs(BrainExtraction.__new__(BrainExtraction), scripted["deepbet_bbox"])
    report: dict[str, dict[str, float]] = {}
    for file, name, size in NETWORKS:
        path = args.repository / name / "1" / "model.onnx"
        export(scripted[name], torch.zeros(1, 1, *size), path,
               f"deepbet 1.0.2 (MIT, Fisch et al. 2024) {file}: softmax (background, brain)")
        report[name] = max_abs_diff(scripted[name], path, inputs[name])
    print(json.dumps(report, indent=2))
    worst = max(r["max_abs_diff"] for r in report.values())
    if worst > args.tolerance:
        print(f"ONNX Runtime differs from TorchScript by {worst:.2e} > {args.tolerance:.0e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
