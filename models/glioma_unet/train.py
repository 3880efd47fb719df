"""Train the glioma U-Net on synthetic cases (see ``synthesize.py``).

A pool of synthetic cases is made first, in this process, then training draws random patches from
it: by default 60 % centred on a tumour voxel, the rest anywhere in the brain, each randomly flipped
along every axis, with its axes permuted (so the model does not depend on the array's orientation)
and a mild per-channel intensity jitter. Loss: binary cross-entropy plus soft Dice, averaged over the
three region channels (WT, TC, ET). Adam with a cosine learning-rate decay; fixed seeds.

``--init`` starts from an earlier checkpoint (a further stage, usually with another ``--seed`` so it
sees a fresh pool); the checkpoint then lists the earlier stages' settings under ``previous_stages``.

Training stops at ``--iterations`` or after ``--max-minutes`` of training, whichever comes first;
the checkpoint records how many iterations were done. Defaults fit about 20-25 minutes of wall time
on 2 CPU cores. The loss curve is written to ``<out>/loss.csv``; the checkpoint to
``<out>/checkpoint.pt``.

    python -m models.glioma_unet.train --out build/glioma_unet
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from models.glioma_unet.network import GliomaUNet
from models.glioma_unet.synthesize import load_templates, synthesize_case
from neuroflow.core.labels import REGION_LABELS, TUMOUR_REGIONS


class PatchPool:
    """Synthetic cases held in memory (float16 images) and a sampler of augmented patches."""

    def __init__(self, cases: int, rng: np.random.Generator) -> None:
        templates = load_templates()
        self.images: list[npt.NDArray[np.float16]] = []
        self.labels: list[npt.NDArray[np.uint8]] = []
        self.tumour_voxels: list[npt.NDArray[np.intp]] = []
        self.rng = rng
        for i in range(cases):
            case = synthesize_case(templates[i % len(templates)], rng)
            self.images.append(case.image.astype(np.float16))
            self.labels.append(case.labels)
            voxels = np.argwhere(case.labels > 0)
            self.tumour_voxels.append(voxels[rng.choice(len(voxels), min(len(voxels), 5000), replace=False)])

    def sample(self, patch: int, foreground_fraction: float) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch: image (4, P, P, P) float32 and region targets (3, P, P, P) float32."""
        rng = self.rng
        index = int(rng.integers(len(self.images)))
        image, labels = self.images[index], self.labels[index]
        shape = np.array(labels.shape)
        if rng.random() < foreground_fraction:
            centre = self.tumour_voxels[index][rng.integers(len(self.tumour_voxels[index]))]
            centre = centre + rng.integers(-patch // 4, patch // 4 + 1, 3)
        else:
            centre = np.array([rng.integers(0, s) for s in shape])
        start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
        sl = tuple(slice(int(a), int(a) + patch) for a in start)
        img = image[(slice(None), *sl)].astype(np.float32)
        lab = labels[sl]
        pad = [(0, patch - s) for s in lab.shape]
        if any(p[1] for p in pad):
            img = np.pad(img, [(0, 0), *pad])
            lab = np.pad(lab, pad)
        regions = np.stack([np.isin(lab, [int(v) for v in REGION_LABELS[r]]) for r in TUMOUR_REGIONS])
        order = rng.permutation(3)
        img = img.transpose(0, *(order + 1))
        regions = regions.transpose(0, *(order + 1))
        for axis in range(1, 4):
            if rng.random() < 0.5:
                img, regions = np.flip(img, axis), np.flip(regions, axis)
        brain = img != 0
        scale = rng.uniform(0.9, 1.1, (4, 1, 1, 1)).astype(np.float32)
        shift = rng.uniform(-0.1, 0.1, (4, 1, 1, 1)).astype(np.float32)
        img = np.where(brain, img * scale + shift, 0.0).astype(np.float32)
        return np.ascontiguousarray(img), np.ascontiguousarray(regions, dtype=np.float32)


def region_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, 1 - soft Dice), each averaged over region channels; Dice is summed over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    dice = (2 * (prob * target).sum(dims) + 1.0) / (prob.sum(dims) + target.sum(dims) + 1.0)
    return bce, 1.0 - dice.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the glioma U-Net on synthetic data.")
    parser.add_argument("--out", type=Path, default=Path("build/glioma_unet"))
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--max-minutes", type=float, default=18.0, help="stop training after this long")
    parser.add_argument("--cases", type=int, default=24, help="synthetic cases in the pool")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base", type=int, default=8, help="channels at full resolution")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--foreground", type=float, default=0.6, help="fraction of tumour-centred patches")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this checkpoint's weights (a further training stage)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    pool = PatchPool(args.cases, rng)
    pool_seconds = time.monotonic() - t0
    print(f"pool of {args.cases} synthetic cases in {pool_seconds:.0f} s", flush=True)

    model = GliomaUNet(base=args.base, levels=args.levels)
    previous: list[object] = []
    if args.init is not None:
        saved = torch.load(args.init, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["state_dict"])
        previous = [*saved["config"].get("previous_stages", []), saved["config"]]
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.max_minutes * 60.0
    t1 = time.monotonic()
    done = 0
    config: dict[str, object] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config["previous_stages"] = previous
    with (args.out / "loss.csv").open("w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(["iteration", "seconds", "lr", "loss", "bce", "dice_loss"])
        for iteration in range(1, args.iterations + 1):
            elapsed = time.monotonic() - t1
            if elapsed > budget:
                break
            progress = max(iteration / args.iterations, elapsed / budget)
            lr = args.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
            for group in optimiser.param_groups:
                group["lr"] = lr
            batch = [pool.sample(args.patch, args.foreground) for _ in range(args.batch)]
            image = torch.from_numpy(np.stack([b[0] for b in batch]))
            target = torch.from_numpy(np.stack([b[1] for b in batch]))
            bce, dice_loss = region_loss(model(image), target)
            loss = bce + dice_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            done = iteration
            writer.writerow([iteration, round(elapsed, 1), f"{lr:.2e}", f"{loss.item():.4f}",
                             f"{bce.item():.4f}", f"{dice_loss.item():.4f}"])
            if iteration % 25 == 0:
                log.flush()
                print(f"it {iteration} {elapsed:.0f}s loss {loss.item():.3f} (bce {bce.item():.3f}, "
                      f"dice loss {dice_loss.item():.3f})", flush=True)
            if iteration % 200 == 0:
                _save(model, args.out, config, done, time.monotonic() - t1, pool_seconds)
    _save(model, args.out, config, done, time.monotonic() - t1, pool_seconds)
    print(f"done: {done} iterations in {time.monotonic() - t1:.0f} s; checkpoint in {args.out}", flush=True)


def _save(model: GliomaUNet, out: Path, config: dict[str, object], iterations: int, seconds: float,
          pool_seconds: float) -> None:
    record = {**config, "iterations_done": iterations, "train_seconds": round(seconds),
              "pool_seconds": round(pool_seconds)}
    torch.save({"state_dict": model.state_dict(), "config": record}, out / "checkpoint.pt")
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
