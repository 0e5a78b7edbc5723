"""Training the student(s): named recipes, seeded, with cached teacher features and the best
checkpoint by validation loss (the 20 % of the training images held out; never the test set)."""
from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.data import to_unit_float
from bench.detector import Detector
from bench.errors import UnknownNameError


@dataclass(frozen=True)
class Recipe:
    name: str
    optimizer: str                 # "sgd" or "adam"
    lr: float
    epochs: dict                   # per method: the paper trains mixed twice as long
    batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4     # STPM's value; the paper does not state one
    onecycle_max_lr: float | None = None
    val_fraction: float = 0.2
    max_train_images: int | None = None   # seeded subset of the training split, for CPU budgets
    # The per-image loss summed over the batch, as STPM, anomalib and the official MixedTeacher code
    # do: their "SGD lr 0.4" is a step size for that sum. "mean" (our earlier convention) divides
    # every step by the batch size; it is kept as the named recipes `*-mean`.
    loss_reduction: str = "sum"

    def epochs_for(self, method: str) -> int:
        return int(self.epochs.get(method, self.epochs["default"]))


LOSS_REDUCTIONS = ("sum", "mean")

RECIPES = {
    "paper": Recipe("paper", "sgd", 0.4, {"default": 100, "mixed": 200}),
    "official": Recipe("official", "adam", 4e-4, {"default": 100, "mixed": 200}, weight_decay=0.0,
                       onecycle_max_lr=4e-3),
    # Fits a 2-core CPU: the paper's optimiser, 4 epochs, batches of 8 (more steps per epoch), and
    # at most 200 training images (a seeded subset; validation stays the full 20 % hold-out).
    "quick": Recipe("quick", "sgd", 0.4, {"default": 4}, batch_size=8, max_train_images=200),
    # The demo's: the paper's optimiser on the small generated set, 12 epochs.
    "demo": Recipe("demo", "sgd", 0.4, {"default": 12}, batch_size=8),
}
# The batch-mean reading of each SGD recipe: what every SGD record made before the sum was the default used.
RECIPES.update({f"{name}-mean": dataclasses.replace(r, name=f"{name}-mean", loss_reduction="mean")
                for name, r in list(RECIPES.items()) if r.optimizer == "sgd"})


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UnknownNameError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


class TrainingDiverged(RuntimeError):
    pass


def reduce_batch(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-image losses (B,) -> the scalar the optimiser steps on."""
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.mean()
    raise ValueError(f"unknown loss reduction {reduction!r}; choose one of {LOSS_REDUCTIONS}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _cache_teacher(detector: Detector, images: torch.Tensor, batch: int, device) -> list:
    """The frozen teachers' features of every image, per branch and level, in half precision: on the
    GPU when training there (a few GB at most), else on the host."""
    store = device if torch.device(device).type == "cuda" else "cpu"
    parts = []
    for i in range(0, len(images), batch):
        fts = detector.teacher_features(to_unit_float(images[i:i + batch], device))
        parts.append([[f.half().to(store) for f in ft] for ft in fts])
    return [[torch.cat([p[b][level] for p in parts]) for level in range(len(parts[0][b]))]
            for b in range(len(parts[0]))]


def _gather(cache: list, index: torch.Tensor, device) -> list:
    """Teacher features of the images in `index`, from the cache."""
    return [[level[index.to(level.device)].to(device).float() for level in branch] for branch in cache]


@dataclass
class TrainSummary:
    epochs: int
    best_epoch: int
    best_val_loss: float
    train_loss: list
    val_loss: list
    wall_s: float
    cached_teacher: bool


def fit(detector: Detector, train_images: torch.Tensor, val_images: torch.Tensor, recipe: Recipe,
        epochs: int, seed: int, device="cpu", cache_teacher: bool = True,
        progress: bool = True, desc: str = "train") -> TrainSummary:
    """Train the students in place; the detector ends holding the best-validation students."""
    seed_everything(seed)
    start = time.perf_counter()
    detector.to(device)
    params = detector.student_parameters()
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    bs = recipe.batch_size
    steps = math.ceil(len(train_images) / bs)
    # OneCycle from the recipe's lr up to its max_lr (div_factor sets the starting point)
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.onecycle_max_lr, epochs=epochs,
                                                 steps_per_epoch=steps, div_factor=recipe.onecycle_max_lr / recipe.lr)
             if recipe.onecycle_max_lr else None)
    train_cache = _cache_teacher(detector, train_images, bs, device) if cache_teacher else None
    val_cache = _cache_teacher(detector, val_images, bs, device) if cache_teacher else None
    gen = torch.Generator().manual_seed(seed)
    best = (math.inf, 0, None)
    train_curve, val_curve = [], []
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        detector.train()
        total = 0.0
        for step, idx in enumerate(torch.randperm(len(train_images), generator=gen).split(bs)):
            x = to_unit_float(train_images[idx], device)
            fts = _gather(train_cache, idx, device) if train_cache else None
            losses = detector.loss(x, fts)
            loss = reduce_batch(losses, recipe.loss_reduction)
            if not torch.isfinite(loss):
                raise TrainingDiverged(f"loss became {loss.item()} at epoch {epoch}, step {step + 1} "
                                       f"(recipe {recipe.name}, lr {recipe.lr}); try a smaller learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched:
                sched.step()
            total += losses.detach().sum().item()
        train_curve.append(total / len(train_images))
        val = evaluate_loss(detector, val_images, val_cache, bs, device)
        val_curve.append(val)
        if val < best[0]:
            best = (val, epoch, copy.deepcopy([b.student.state_dict() for b in detector.branches]))
        bar.set_postfix(loss=f"{train_curve[-1]:.4f}", val=f"{val:.4f}", best=best[1])
    bar.close()
    for b, state in zip(detector.branches, best[2]):
        b.student.load_state_dict(state)
    detector.eval()
    return TrainSummary(epochs, best[1], best[0], train_curve, val_curve,
                        time.perf_counter() - start, cache_teacher)


@torch.no_grad()
def evaluate_loss(detector: Detector, images: torch.Tensor, cache, bs: int, device) -> float:
    detector.eval()
    total = 0.0
    for idx in torch.arange(len(images)).split(bs):
        x = to_unit_float(images[idx], device)
        fts = _gather(cache, idx, device) if cache else None
        total += detector.loss(x, fts).sum().item()
    return total / len(images)
