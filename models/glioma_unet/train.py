"""Train the glioma U-Net on synthetic cases (see ``synthesize.py``), in resumable chunks.

A pool of synthetic cases is made first, in this process; one case of it is replaced by a fresh one
every ``--refresh-every`` iterations, so a long run sees many brains, tumours and contrasts. Training
draws random patches from the pool: ``--border`` of them centred on a voxel of a region border (WT,
TC or ET: where the errors are), ``--foreground`` on any tumour voxel, the rest anywhere in the brain,
each randomly flipped along every axis, with its axes permuted and a mild per-channel intensity
jitter. **Sequence dropout**: with probability ``--dropout`` a patch loses a random subset of its
channels (set to 0, which is what a missing sequence is after z-scoring), always keeping FLAIR or
T1CE, so the model segments from any subset holding one of them (model card ``min_roles_any``).
Loss: binary cross-entropy plus soft Dice, averaged over the three region channels (WT, TC, ET).
Adam; the learning rate warms up over 20 iterations and follows a cosine from ``--lr`` down to 5 %
of it over the chunk (by iterations or wall time, whichever runs out first), so every chunk ends on
weights fit to export.

Chunks: a run stops after ``--max-minutes`` (or ``--chunk-iterations``) and on SIGTERM/SIGINT, and
saves ``<out>/checkpoint.pt`` (weights, Adam state, numpy and torch RNG states, iterations done, the
settings of every chunk so far) then and every ``--save-every`` iterations. ``--resume CHECKPOINT``
starts the next chunk from it (its pool is synthesised anew from the restored RNG). ``--init`` takes
only the weights of a checkpoint or of an exported ``model.onnx`` (e.g. version 1). Each chunk writes
``<out>/loss.csv`` (mean losses per ``--log-every`` iterations) and ``<out>/training.json``.

On a GPU (``--device cuda``) one step takes milliseconds and synthesis, about 10 s a case on one core, would
stall it: ``--synth-workers N`` makes cases in N processes instead, each seeded from the run's RNG, and a
finished case replaces the pool's oldest as soon as it is ready (``--refresh-every`` is then unused). The
checkpoint is the same either way (weights and Adam state on the CPU), so chunks move between machines.

    python -m models.glioma_unet.train --out build/glioma_unet_v2 \\
        --init models/repository/glioma_unet/1/model.onnx --max-minutes 45
    python -m models.glioma_unet.train --out build/glioma_unet_v2 --resume build/glioma_unet_v2/checkpoint.pt
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from models.chunked_training import (
    StopRequest,
    WorkerCases,
    chunk_config,
    chunk_lr,
    load_initial_weights,
    resume,
    save_checkpoint,
)
from models.glioma_unet.network import GliomaUNet
from models.glioma_unet.synthesize import (
    TEMPLATE_LOADERS,
    BrainTemplate,
    SyntheticCase,
    load_templates,
    synthesize_case,
)
from neuroflow.core.labels import REGION_LABELS, TUMOUR_REGIONS
from neuroflow.core.roles import GLIOMA_INPUT_ROLES, SeriesRole

# Channels of which a patch always keeps one under sequence dropout (the model card's min_roles_any).
KEEP_ONE_OF = (GLIOMA_INPUT_ROLES.index(SeriesRole.FLAIR), GLIOMA_INPUT_ROLES.index(SeriesRole.T1CE))
_SAMPLED_VOXELS = 5000


# A case as the pool holds it: float16 image, labels, and samples of its tumour and region-border voxels.
PoolEntry = tuple[npt.NDArray[np.float16], npt.NDArray[np.uint8], npt.NDArray[np.intp], npt.NDArray[np.intp]]
_WORKER_TEMPLATES: list[BrainTemplate] = []


def pool_entry(case: SyntheticCase, rng: np.random.Generator) -> PoolEntry:
    regions = [np.isin(case.labels, [int(v) for v in REGION_LABELS[r]]) for r in TUMOUR_REGIONS]
    border = np.zeros(case.labels.shape, dtype=bool)
    for mask in regions:
        if mask.any():
            border |= mask & ~ndimage.binary_erosion(mask)

    def subsample(voxels: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
        return voxels[rng.choice(len(voxels), min(len(voxels), _SAMPLED_VOXELS), replace=False)]

    return (case.image.astype(np.float16), case.labels, subsample(np.argwhere(regions[0])),
            subsample(np.argwhere(border)))


def _load_worker_templates() -> None:
    _WORKER_TEMPLATES[:] = load_templates()  # once per synthesis process, not pickled with every job


def _synthesize_in_worker(template: int, seed: int) -> PoolEntry:
    # The entry is made here too: the voxel searches would otherwise hold up the training process.
    rng = np.random.default_rng(seed)
    return pool_entry(synthesize_case(_WORKER_TEMPLATES[template], rng), rng)


class PatchPool:
    """Synthetic cases held in memory (float16 images) and a sampler of augmented patches. With ``workers``,
    cases are made in that many processes and join the pool as they finish (``refresh``)."""

    def __init__(self, cases: int, rng: np.random.Generator, workers: int = 0) -> None:
        self.rng = rng
        self.capacity = cases
        self.made = 0
        self.images: list[npt.NDArray[np.float16]] = []
        self.labels: list[npt.NDArray[np.uint8]] = []
        self.tumour_voxels: list[npt.NDArray[np.intp]] = []
        self.border_voxels: list[npt.NDArray[np.intp]] = []
        self._workers: WorkerCases[PoolEntry] | None = None
        if workers:
            self.templates: list[BrainTemplate] = []
            self._workers = WorkerCases(workers, _load_worker_templates, _synthesize_in_worker)
            for _ in range(cases):
                self._submit()
            while len(self.images) < cases:
                self._insert(self._workers.oldest())
                self._submit()
        else:
            self.templates = load_templates()
            for _ in range(cases):
                self.add_case()

    def add_case(self) -> None:
        """Synthesise one case here; once the pool is full it replaces the oldest."""
        self._insert(pool_entry(synthesize_case(self.templates[self.made % len(self.templates)], self.rng), self.rng))

    def refresh(self) -> None:
        """Put every case the workers have finished into the pool, and start as many new ones."""
        assert self._workers is not None
        for entry in self._workers.finished():
            self._insert(entry)
            self._submit()

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()

    def _submit(self) -> None:
        assert self._workers is not None
        template = self._workers.submitted % len(TEMPLATE_LOADERS)  # alternate, as add_case does
        self._workers.submit(template, int(self.rng.integers(2**63)))

    def _insert(self, entry: PoolEntry) -> None:
        self.made += 1
        if len(self.images) < self.capacity:
            self.images.append(entry[0])
            self.labels.append(entry[1])
            self.tumour_voxels.append(entry[2])
            self.border_voxels.append(entry[3])
        else:
            slot = (self.made - 1) % self.capacity  # the oldest case
            self.images[slot], self.labels[slot], self.tumour_voxels[slot], self.border_voxels[slot] = entry

    def sample(self, patch: int, border: float, foreground: float, dropout: float) -> tuple[np.ndarray, np.ndarray]:
        """One augmented patch: image (4, P, P, P) float32 and region targets (3, P, P, P) float32."""
        rng = self.rng
        index = int(rng.integers(len(self.images)))
        image, labels = self.images[index], self.labels[index]
        shape = np.array(labels.shape)
        draw = rng.random()
        if draw < border and len(self.border_voxels[index]):
            centre = self.border_voxels[index][rng.integers(len(self.border_voxels[index]))]
            centre = centre + rng.integers(-patch // 4, patch // 4 + 1, 3)
        elif draw < border + foreground:
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
        if rng.random() < dropout:
            img[~sequence_keep_mask(rng)] = 0.0
        return np.ascontiguousarray(img), np.ascontiguousarray(regions, dtype=np.float32)


def sequence_keep_mask(rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Which channels a dropped-out patch keeps: each with probability 1/2, at least one of FLAIR and
    T1CE (if neither was drawn, one of them at random)."""
    keep = rng.random(len(GLIOMA_INPUT_ROLES)) < 0.5
    if not keep[list(KEEP_ONE_OF)].any():
        keep[KEEP_ONE_OF[int(rng.integers(len(KEEP_ONE_OF)))]] = True
    return keep


def region_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, 1 - soft Dice), each averaged over region channels; Dice is summed over the batch."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    dice = (2 * (prob * target).sum(dims) + 1.0) / (prob.sum(dims) + target.sum(dims) + 1.0)
    return bce, 1.0 - dice.mean()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train the glioma U-Net on synthetic data, in chunks.")
    parser.add_argument("--out", type=Path, default=Path("build/glioma_unet"))
    parser.add_argument("--max-minutes", type=float, default=40.0, help="stop this chunk after this long")
    parser.add_argument("--chunk-iterations", type=int, default=3000, help="stop this chunk after so many")
    parser.add_argument("--cases", type=int, default=12, help="synthetic cases in the pool")
    parser.add_argument("--refresh-every", type=int, default=50, help="replace one pool case per N iterations")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base", type=int, default=8, help="channels at full resolution")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the chunk")
    parser.add_argument("--border", type=float, default=0.35, help="fraction of patches centred on a border")
    parser.add_argument("--foreground", type=float, default=0.3, help="fraction centred on any tumour voxel")
    parser.add_argument("--dropout", type=float, default=0.5, help="probability of sequence dropout per patch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where the network trains: cpu, or cuda on a GPU machine")
    parser.add_argument("--synth-workers", type=int, default=0,
                        help="make cases in this many processes, each joining the pool when ready (0: in this "
                             "process, one per --refresh-every iterations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--init", type=Path, default=None, help="weights only: a checkpoint or a model.onnx")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint (next chunk)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = GliomaUNet(base=args.base, levels=args.levels).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)  # a restored state moves to the weights' device
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    previous: list[dict[str, Any]] = []
    total_done = 0
    if args.resume is not None:
        total_done, previous, _ = resume(args.resume, model, optimiser, rng)
    elif args.init is not None:
        load_initial_weights(model, args.init)
    stop = StopRequest()
    config = chunk_config(vars(args), previous)
    config["keep_one_of"] = [GLIOMA_INPUT_ROLES[i].value for i in KEEP_ONE_OF]
    chunk = config["chunk"]
    budget = args.max_minutes * 60.0
    t0 = time.monotonic()
    pool = PatchPool(args.cases, rng, workers=args.synth_workers)
    print(f"chunk {chunk}: pool of {args.cases} synthetic cases in {time.monotonic() - t0:.0f} s on {device}",
          flush=True)

    def save(done: int, reason: str) -> None:
        save_checkpoint(args.out, model, optimiser, rng, total_done + done, {
            **config, "iterations_done": done, "iterations_total": total_done + done,
            "wall_seconds": round(time.monotonic() - t0), "pool_cases_made": pool.made, "saved_because": reason})

    done = 0
    window: list[tuple[float, float, float]] = []
    csv_path = args.out / "loss.csv"
    with csv_path.open("w", newline="") as log:
        writer = csv.writer(log)
        writer.writerow(["iteration_total", "chunk", "seconds", "lr", "loss", "bce", "dice_loss", "pool_cases_made"])
        while done < args.chunk_iterations and not stop.signal:
            elapsed = time.monotonic() - t0
            if elapsed > budget:
                break
            lr = chunk_lr(args.lr, done, args.chunk_iterations, elapsed, budget)
            for group in optimiser.param_groups:
                group["lr"] = lr
            batch = [pool.sample(args.patch, args.border, args.foreground, args.dropout) for _ in range(args.batch)]
            image = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
            target = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
            bce, dice_loss = region_loss(model(image), target)
            loss = bce + dice_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            done += 1
            window.append((loss.item(), bce.item(), dice_loss.item()))
            if done % args.log_every == 0:
                mean = np.mean(window, axis=0)
                window.clear()
                writer.writerow([total_done + done, chunk, round(time.monotonic() - t0), f"{lr:.2e}",
                                 f"{mean[0]:.4f}", f"{mean[1]:.4f}", f"{mean[2]:.4f}", pool.made])
                log.flush()
                print(f"it {total_done + done} {time.monotonic() - t0:.0f}s lr {lr:.1e} loss {mean[0]:.3f} "
                      f"(bce {mean[1]:.3f}, dice loss {mean[2]:.3f})", flush=True)
            if done % args.save_every == 0:
                save(done, "periodic")
            if args.synth_workers:
                pool.refresh()
            elif args.refresh_every and done % args.refresh_every == 0:
                pool.add_case()
    reason = stop.signal or ("time budget" if done < args.chunk_iterations else "chunk iterations")
    save(done, reason)
    pool.close()
    print(f"chunk {chunk} done ({reason}): {done} iterations, {total_done + done} in all, "
          f"{time.monotonic() - t0:.0f} s; checkpoint in {args.out}", flush=True)


if __name__ == "__main__":
    main()
