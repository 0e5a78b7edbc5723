"""One job, end to end: data -> detector -> train (or reuse the trained student) -> evaluate -> record."""
from __future__ import annotations

import dataclasses
import random
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from bench import data as data_mod
from bench.build import build_detector, teacher_sources
from bench.detector import MAP_PATH, upsample_sum
from bench.env import git_revision, hardware, software
from bench.evaluate import branch_maps, score_and_measure
from bench.metrics import METRIC_SETTINGS
from bench.store import write_json_atomic
from bench.train import fit, get_recipe, seed_everything
from bench.variants import ONE_PASS_METHODS, Variant

SCHEMA_VERSION = 1
N_EXAMPLES = 4          # test images whose maps are kept beside the record (seed 0 only)
EXAMPLE_SIZE = 128


@dataclass(frozen=True)
class Job:
    variant_name: str
    variant: Variant
    data: str
    category: str
    seed: int = 0
    recipe: str = "quick"
    epochs: int | None = None        # None: the recipe's epochs for this method
    dataset: str | None = None       # None: the data folder's name

    @property
    def n_epochs(self) -> int:
        if self.variant.method in ONE_PASS_METHODS:  # a memory bank is one pass, whatever the recipe or --epochs
            return 1
        return self.epochs if self.epochs is not None else get_recipe(self.recipe).epochs_for(self.variant.method)

    @property
    def student_key(self) -> tuple:
        """Jobs with equal keys train the same student (they differ only in evaluation fields)."""
        return (self.variant.train_key, str(Path(self.data).resolve()), self.category, self.seed, self.recipe,
                self.n_epochs)

    @property
    def dataset_name(self) -> str:
        return self.dataset or Path(self.data).resolve().name

    @property
    def stem(self) -> str:
        return f"{self.variant.method}-{self.variant.key}_{self.recipe}-{self.n_epochs}ep_seed{self.seed}"

    def record_path(self, results: str | Path) -> Path:
        return Path(results) / "runs" / self.dataset_name / self.category / f"{self.stem}.json"

    def checkpoint_path(self, results: str | Path) -> Path:
        return (Path(results) / "checkpoints" / self.dataset_name / self.category /
                f"{self.variant.train_key}_{self.recipe}-{self.n_epochs}ep_seed{self.seed}.pt")

    def describe(self) -> str:
        return (f"{self.variant_name} [{self.variant.key}] {self.dataset_name}/{self.category} "
                f"seed {self.seed} {self.recipe} {self.n_epochs}ep")


def _base_record(job: Job, device: str) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "method": job.variant.method,
        "variant_name": job.variant_name,
        "variant_key": job.variant.key,
        "train_key": job.variant.train_key,
        "variant": job.variant.fields(),
        "dataset": job.dataset_name,
        "category": job.category,
        "data_root": str(Path(job.data).resolve()),
        "seed": job.seed,
        "recipe": job.recipe,
        "recipe_fields": {k: v for k, v in dataclasses.asdict(get_recipe(job.recipe)).items() if k != "name"},
        "epochs": job.n_epochs,
        "software": software(),
        "hardware": hardware(device),
        "git_revision": git_revision(),
    }


def _train_or_reuse(job: Job, detector, split, images, device, results, progress) -> dict:
    """Variants that differ only in evaluation (score, fusion, blur) reuse one trained student."""
    ckpt = job.checkpoint_path(results)
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        for b, state in zip(detector.branches, saved["students"]):
            b.student.load_state_dict(state)
        return {**saved["summary"], "reused_checkpoint": True}
    recipe = get_recipe(job.recipe)
    train_idx, val_idx = data_mod.train_val_indices(len(split.train), job.seed, recipe.val_fraction)
    if recipe.max_train_images and len(train_idx) > recipe.max_train_images:
        train_idx = sorted(random.Random(job.seed).sample(train_idx, recipe.max_train_images))
    learn = getattr(detector, "fit_fn", fit)  # a peer that learns without gradients (PatchCore) brings its own
    summary = learn(detector, images[train_idx], images[val_idx], recipe, job.n_epochs,
                    job.seed, device=device, progress=progress, desc=job.describe())
    summary = {**dataclasses.asdict(summary), "n_train": len(train_idx), "n_val": len(val_idx)}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"students": [b.student.state_dict() for b in detector.branches], "summary": summary}, tmp)
    tmp.replace(ckpt)
    return {**summary, "reused_checkpoint": False}


def _examples(job: Job, split, test_images, masks, ev, path: Path) -> str | None:
    """A few test images with their ground truth and maps, small, for the anomaly-map gallery."""
    if job.seed != 0:
        return None
    labels = np.array([s.label for s in split.test])
    defective, good = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    pick = np.r_[defective[np.linspace(0, len(defective) - 1, N_EXAMPLES - 1).astype(int)], good[:1]]
    def small(t):
        t = t.float().unsqueeze(1) if t.dim() == 3 else t.float()
        return torch.nn.functional.interpolate(t, size=EXAMPLE_SIZE, mode="area")
    arrays = {
        "image": small(test_images[pick]).round().byte().numpy(),
        "mask": (small(torch.from_numpy(masks[pick])).squeeze(1) > 0.5).numpy(),
        "map": small(torch.from_numpy(ev.maps[pick])).squeeze(1).half().numpy(),
        "score": ev.scores[pick], "label": labels[pick],
        "name": np.array([f"{split.test[i].defect}/{split.test[i].path.name}" for i in pick]),
    }
    for name, levels in ev.levels.items():   # each branch's Eq. 9-10 map before fusion and blur
        arrays[f"map_{name}"] = upsample_sum([lv[pick] for lv in levels], (EXAMPLE_SIZE,) * 2).half().numpy()
    out = path.with_suffix(".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return out.name


# The last job's test set and branch maps. A following job that differs only in evaluation fields
# (the readings grid's score and fusion axes, which the grid runs back to back) reuses them instead
# of reloading the data and running the networks again.
_LAST: dict = {}


def run_job(job: Job, results: str | Path = "results", device: str = "cpu",
            weights: dict[str, str] | None = None, progress: bool = True) -> dict:
    """Train and evaluate one job and write its record; returns the record. Raises on failure."""
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    record = _base_record(job, device)
    seed_everything(job.seed)  # the students' initial weights belong to the run's seed
    detector = build_detector(job.variant, weights)
    # branch maps depend on the trained student and on how they weigh the levels
    key = (job.student_key, job.variant.map_weighting, str(Path(results).resolve()))
    if _LAST.get("key") != key:
        _LAST.clear()
        split = data_mod.load_split(job.data, job.category)
        size = job.variant.image_size
        train_images = data_mod.load_images(split.train, size)
        test_images = data_mod.load_images(split.test, size)
        masks = data_mod.load_masks(split.test, size).numpy()
        train = _train_or_reuse(job, detector, split, train_images, device, results, progress)
        del train_images
        parts = branch_maps(detector, test_images, device)
        _LAST.update(key=key, split=split, test_images=test_images, masks=masks, train=train, parts=parts,
                     labels=np.array([s.label for s in split.test]))
    else:
        _LAST["train"] = {**_LAST["train"], "reused_checkpoint": True}
    split, labels, masks = _LAST["split"], _LAST["labels"], _LAST["masks"]
    ev = score_and_measure(detector, _LAST["parts"], labels, masks)
    path = job.record_path(results)
    record.update({
        "status": "ok",
        "metrics": ev.metrics,
        "metric_settings": METRIC_SETTINGS,
        "map_path": MAP_PATH,   # absent in older records: they were `exact` too
        "train": _LAST["train"],
        "teachers": teacher_sources(detector),
        **({"implementation": detector.implementation} if hasattr(detector, "implementation") else {}),
        "layout": split.layout,
        "n_test": len(split.test), "n_test_defective": int(labels.sum()),
        "test": {"labels": labels.tolist(), "scores": ev.scores.tolist(),
                 "defect": [s.defect for s in split.test]},
        "examples": _examples(job, split, _LAST["test_images"], masks, ev, path),
        "started": started.isoformat(timespec="seconds"),
        "wall_s": round(time.perf_counter() - t0, 2),
    })
    write_json_atomic(path, record)
    return record


def write_failure(job: Job, err: BaseException, results: str | Path = "results", device: str = "cpu") -> dict:
    record = _base_record(job, device)
    record.update({"status": "failed", "error": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc(limit=-6)})
    write_json_atomic(job.record_path(results), record)
    return record
