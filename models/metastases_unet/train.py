"""Train the metastases U-Net (the glioma architecture, 2 inputs, 1 output) on synthetic metastases.

Cases come from ``neuroflow.devtools.synthetic_metastases.random_case`` (metastases of 2-40 mm, solid, ring,
necrotic, haemorrhagic, with oedema, at the grey-white junction and near the cortex) in the real brains of
``real_backgrounds`` (Colin27, with enhancing cortical veins drawn into its T1 so bright non-lesions are
seen; the two MS patients' real T1 post-contrast). Training seeds start at :data:`TRAIN_SEED_BASE`; the
evaluation (``evaluate.py``) uses seeds below it, never seen here.

Inputs are z-scored in the brain mask by ``zscore_in_mask``, the function the pipeline's preprocessing
uses, in the channel order of ``METASTASES_INPUT_ROLES`` (T1CE, FLAIR). With probability ``--dropout`` a
patch loses its FLAIR (all zero, what a missing sequence is after z-scoring), so the model works on a
T1CE alone (model card ``min_roles_any: [T1CE]``).

Loss: **instance-weighted** BCE (every voxel of lesion i weighs ``clip(sqrt(REF_VOXELS / n_i), 1, MAX_W)``,
so a 2-3 mm lesion of a few voxels counts as much as it must to be found next to a 30 mm one) plus a
batch soft Dice. Patches: ``--foreground`` of them centred near a lesion of a random case, chosen among its
lesions (not among voxels: small lesions are sampled as often as large ones; with ``--small-bias`` more often,
version 3's chunk), ``--bright-negatives`` of them near a voxel as bright as a metastasis on the T1CE but clear of
every lesion (where version 3's small false positives were), the rest anywhere in the brain; random flips, axis
permutations and per-channel intensity scale/shift/gamma.

Chunks, as the glioma trainer's (``models/chunked_training.py``): a run stops after ``--max-minutes`` (or
``--iterations``) and on SIGTERM/SIGINT, and saves ``<out>/checkpoint.pt`` (weights, Adam state, random states,
the next case's seed, the settings of every chunk so far) then and every ``--save-every`` iterations;
``--resume CHECKPOINT`` goes on from it with fresh cases; ``--init`` takes only the weights of a checkpoint or of
an exported ``model.onnx`` (e.g. version 1, whose stage checkpoints were not kept). On a GPU (``--device cuda``)
``--synth-workers N`` makes cases in N processes so the GPU does not wait for synthesis.

    nice -n 10 python -m models.metastases_unet.train --out build/metastases_unet --max-minutes 50
    python -m models.metastases_unet.train --out build/metastases_unet_v2 --device cuda --synth-workers 12 \\
        --cases 24 --batch 8 --init models/repository/metastases_unet/1/model.onnx --max-minutes 8
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
from models.metastases_unet.patch_sampling import bright_negatives, lesion_chances
from neuroflow.core.roles import METASTASES_INPUT_ROLES, SeriesRole
from neuroflow.devtools.synthetic_metastases import Background, SyntheticMetastases, random_case, real_backgrounds
from neuroflow.preprocess.normalise import zscore_in_mask

TRAIN_SEED_BASE = 100_000
REF_VOXELS = 1000.0
MAX_W = 15.0
_MARGIN = 4
# Bright non-lesion patch centres (``--bright-negatives``): T1CE z-score of a metastasis in the MS brains' real
# post-contrast T1 (1.5-2.8, EVALUATION.md "Version 3"), kept clear of lesions by 3 voxels, at most 20 000 a case.
BRIGHT_MIN_Z = 2.0
BRIGHT_MARGIN = 3
BRIGHT_AT_MOST = 20_000


def case_arrays(case: SyntheticMetastases, brain: npt.NDArray[np.bool_]) -> tuple[np.ndarray, np.ndarray]:
    """(image (2, Z, Y, X) float32 z-scored, lesion labels uint16) cropped to the brain's box."""
    image = np.stack([zscore_in_mask(np.asarray(case.t1ce.array), brain),
                      zscore_in_mask(np.asarray(case.flair.array), brain)])
    hits = [np.flatnonzero(brain.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    box = tuple(slice(max(0, int(h[0]) - _MARGIN), int(h[-1]) + 1 + _MARGIN) for h in hits)
    return image[(slice(None), *box)], np.asarray(case.labels.array, dtype=np.uint16)[box]


def instance_weights(labels: npt.NDArray[np.uint16]) -> npt.NDArray[np.float32]:
    """Per-voxel BCE weight: 1 outside lesions; inside lesion i, clip(sqrt(REF_VOXELS / n_i), 1, MAX_W)."""
    counts = np.bincount(labels.ravel()).astype(np.float64)
    per_label = np.clip(np.sqrt(REF_VOXELS / np.maximum(counts, 1.0)), 1.0, MAX_W)
    per_label[0] = 1.0
    return per_label[labels].astype(np.float32)


# A case as the pool holds it: float16 image, lesion labels, per-voxel weights, each lesion's voxels, bright
# non-lesion voxels.
PoolEntry = tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]
_WORKER_BACKGROUNDS: list[Background] = []


def pool_entry(backgrounds: list[Background], seed: int) -> PoolEntry:
    """Synthetic case ``seed`` (metastases in background ``seed`` modulo their number) as the pool holds it."""
    background = backgrounds[seed % len(backgrounds)]
    case = random_case(background, seed, count=(1, 12))
    image, labels = case_arrays(case, np.asarray(background.brain_mask.array) > 0)
    voxels = [np.argwhere(labels == n) for n in range(1, int(labels.max()) + 1)]
    bright = bright_negatives(image[METASTASES_INPUT_ROLES.index(SeriesRole.T1CE)], labels, min_z=BRIGHT_MIN_Z,
                              margin=BRIGHT_MARGIN, at_most=BRIGHT_AT_MOST, rng=np.random.default_rng(seed))
    return image.astype(np.float16), labels, instance_weights(labels), [v for v in voxels if len(v)], bright


def _load_worker_backgrounds() -> None:
    _WORKER_BACKGROUNDS[:] = real_backgrounds()  # once per synthesis process, not pickled with every job


def _entry_in_worker(seed: int) -> PoolEntry:
    return pool_entry(_WORKER_BACKGROUNDS, seed)


class Pool:
    """Synthetic cases in memory and a sampler of augmented patches. Case ``k`` is made from seed
    ``first_seed + k``, so a resumed run goes on with fresh cases. With ``workers``, cases are made in that many
    processes and join the pool as they finish (``refresh``); without, one is made here per ``add``."""

    def __init__(self, size: int, rng: np.random.Generator, first_seed: int, workers: int = 0) -> None:
        self.rng, self.next_seed, self.size = rng, first_seed, size
        self.images: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.weights: list[np.ndarray] = []
        self.lesions: list[list[np.ndarray]] = []
        self.bright: list[np.ndarray] = []
        self._workers: WorkerCases[PoolEntry] | None = None
        if workers:
            self.backgrounds: list[Background] = []
            self._workers = WorkerCases(workers, _load_worker_backgrounds, _entry_in_worker)
            for _ in range(size):
                self._workers.submit(self._take_seed())
            while len(self.images) < size:
                self._insert(self._workers.oldest())
                self._workers.submit(self._take_seed())
        else:
            self.backgrounds = real_backgrounds()
            for _ in range(size):
                self.add()

    def add(self) -> None:
        """Make one case here; once the pool is full it replaces a random one."""
        self._insert(pool_entry(self.backgrounds, self._take_seed()))

    def refresh(self) -> None:
        """Put every case the workers have finished into the pool, and start as many new ones."""
        assert self._workers is not None
        for entry in self._workers.finished():
            self._insert(entry)
            self._workers.submit(self._take_seed())

    def close(self) -> None:
        if self._workers is not None:
            self._workers.close()

    def _take_seed(self) -> int:
        seed = self.next_seed
        self.next_seed += 1
        return seed

    def _insert(self, entry: PoolEntry) -> None:
        if len(self.images) < self.size:
            self.images.append(entry[0])
            self.labels.append(entry[1])
            self.weights.append(entry[2])
            self.lesions.append(entry[3])
            self.bright.append(entry[4])
        else:
            slot = int(self.rng.integers(self.size))
            (self.images[slot], self.labels[slot], self.weights[slot], self.lesions[slot],
             self.bright[slot]) = entry

    def sample(self, patch: int, foreground: float, dropout: float, small_bias: float = 0.0,
               bright: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented patch: ``foreground`` of them centred near a lesion, ``bright`` near a bright non-lesion
        voxel, the rest anywhere (with ``bright`` 0, the same draws as before it existed)."""
        rng = self.rng
        index = int(rng.integers(len(self.images)))
        image, labels, weights = self.images[index], self.labels[index], self.weights[index]
        shape = np.array(labels.shape)
        kind = rng.random()
        near: np.ndarray | None = None  # the voxel a centred patch is drawn around
        if kind < foreground and self.lesions[index]:
            chances = lesion_chances([len(v) for v in self.lesions[index]], small_bias)
            lesion = self.lesions[index][int(rng.choice(len(chances), p=chances))]
            near = lesion[int(rng.integers(len(lesion)))]
        elif foreground <= kind < foreground + bright and len(self.bright[index]):
            near = self.bright[index][int(rng.integers(len(self.bright[index])))].astype(np.int64)
        if near is not None:
            centre = near + rng.integers(-patch // 3, patch // 3 + 1, 3)
        else:
            centre = np.array([rng.integers(0, s) for s in shape])
        start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
        sl = tuple(slice(int(a), int(a) + patch) for a in start)
        img = image[(slice(None), *sl)].astype(np.float32)
        lab = (labels[sl] > 0).astype(np.float32)
        wgt = weights[sl]
        pad = [(0, patch - s) for s in lab.shape]
        if any(p[1] for p in pad):
            img, lab, wgt = np.pad(img, [(0, 0), *pad]), np.pad(lab, pad), np.pad(wgt, pad, constant_values=1.0)
        order = rng.permutation(3)
        img, lab, wgt = img.transpose(0, *(order + 1)), lab.transpose(*order), wgt.transpose(*order)
        for axis in range(3):
            if rng.random() < 0.5:
                img, lab, wgt = np.flip(img, axis + 1), np.flip(lab, axis), np.flip(wgt, axis)
        brain = img != 0
        scale = rng.uniform(0.85, 1.15, (2, 1, 1, 1)).astype(np.float32)
        shift = rng.uniform(-0.15, 0.15, (2, 1, 1, 1)).astype(np.float32)
        img = np.where(brain, img * scale + shift, 0.0).astype(np.float32)
        if rng.random() < dropout:
            img[METASTASES_INPUT_ROLES.index(SeriesRole.FLAIR)] = 0.0
        return (np.ascontiguousarray(img), np.ascontiguousarray(lab[None]), np.ascontiguousarray(wgt[None]))


def loss_terms(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(instance-weighted BCE, 1 - batch soft Dice)."""
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / weight.sum()
    prob = torch.sigmoid(logits)
    dice = (2 * (prob * target).sum() + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce, 1.0 - dice


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/metastases_unet"))
    parser.add_argument("--max-minutes", type=float, default=50.0, help="stop this chunk after this long")
    parser.add_argument("--iterations", type=int, default=20000, help="stop this chunk after so many")
    parser.add_argument("--cases", type=int, default=8, help="synthetic cases in the pool")
    parser.add_argument("--refresh-every", type=int, default=60, help="replace one pool case per N iterations")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--base", type=int, default=8)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of the chunk")
    parser.add_argument("--foreground", type=float, default=0.6)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--small-bias", type=float, default=0.0,
                        help="lesion-centred patches pick a lesion with probability ~ voxels ** -SMALL_BIAS "
                             "(0: every lesion alike)")
    parser.add_argument("--bright-negatives", type=float, default=0.0,
                        help="this fraction of patches centred near a voxel as bright as a metastasis on the T1CE "
                             "but clear of every lesion (veins, dura, the MS brains' own bright tissue)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the network trains: cpu, or cuda on a GPU machine")
    parser.add_argument("--synth-workers", type=int, default=0,
                        help="make cases in this many processes, each joining the pool when ready (0: in this "
                             "process, one per --refresh-every iterations)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--init", type=Path, default=None, help="weights only: a checkpoint or a model.onnx")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint (next chunk)")
    args = parser.parse_args(argv)
    if args.foreground + args.bright_negatives > 1.0:
        parser.error("--foreground plus --bright-negatives is the share of centred patches: at most 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = GliomaUNet(args.base, args.levels, in_channels=len(METASTASES_INPUT_ROLES), out_channels=1).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)  # a restored state moves to the weights' device
    previous: list[dict[str, Any]] = []
    total_done = 0
    first_seed = TRAIN_SEED_BASE + 1000 * args.seed
    if args.resume is not None:
        total_done, previous, record = resume(args.resume, model, optimiser, rng)
        first_seed = int(record.get("next_case_seed", first_seed))
    elif args.init is not None:
        load_initial_weights(model, args.init)
    stop = StopRequest()
    config = chunk_config(vars(args), previous)
    budget = args.max_minutes * 60.0
    started = time.monotonic()
    pool = Pool(args.cases, rng, first_seed, workers=args.synth_workers)
    print(f"chunk {config['chunk']}: pool of {args.cases} cases in {time.monotonic() - started:.0f} s on {device}",
          flush=True)
    log_rows: list[list[float]] = []
    done = 0

    def save(reason: str) -> None:
        save_checkpoint(args.out, model, optimiser, rng, total_done + done, {
            **config, "iterations_done": done, "iterations_total": total_done + done,
            "minutes": round((time.monotonic() - started) / 60, 1), "cases_started": pool.next_seed - first_seed,
            "next_case_seed": pool.next_seed, "saved_because": reason})
        with (args.out / "loss.csv").open("w", newline="") as f:
            csv.writer(f).writerows([["iteration", "bce", "dice_loss", "minutes"], *log_rows])

    bce_sum = dice_sum = 0.0
    while done < args.iterations and not stop.signal:
        elapsed = time.monotonic() - started
        if elapsed > budget:
            break
        lr = chunk_lr(args.lr, done, args.iterations, elapsed, budget)
        for group in optimiser.param_groups:
            group["lr"] = lr
        batch = [pool.sample(args.patch, args.foreground, args.dropout, args.small_bias, args.bright_negatives)
                 for _ in range(args.batch)]
        x, y, w = (torch.from_numpy(np.stack([b[i] for b in batch])).to(device) for i in range(3))
        bce, dice = loss_terms(model(x), y, w)
        optimiser.zero_grad()
        (bce + dice).backward()
        optimiser.step()
        done += 1
        bce_sum, dice_sum = bce_sum + float(bce.detach()), dice_sum + float(dice.detach())
        if done % 10 == 0:
            log_rows.append([total_done + done, round(bce_sum / 10, 5), round(dice_sum / 10, 5),
                             round(elapsed / 60, 2)])
            print(*log_rows[-1], f"lr={lr:.2e}", flush=True)
            bce_sum = dice_sum = 0.0
        if args.synth_workers:
            pool.refresh()
        elif done % args.refresh_every == 0:
            pool.add()
        if done % args.save_every == 0:
            save("periodic")
    save(stop.signal or ("time budget" if done < args.iterations else "chunk iterations"))
    pool.close()


if __name__ == "__main__":
    main()
