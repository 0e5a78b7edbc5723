"""Jobs that share one trained student, end to end: data -> detector -> train once (or load the
checkpoint) -> each job's evaluation -> one run record per job."""
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
from bench.data_entries import data_ref
from bench.detector import upsample_sum
from bench.env import git_revision, hardware, software
from bench.evaluate import branch_maps, score_and_measure
from bench.jobs import Job
from bench.metrics import METRIC_SETTINGS
from bench.records import RunRecord, jsonable, write
from bench.train import fit, get_recipe, seed_everything

N_EXAMPLES = 4          # test images whose maps are kept beside the record (seed 0 only)
EXAMPLE_SIZE = 128


def job_record(job: Job, device: str, status: str = "ok") -> RunRecord:
    """What a record says of its job before anything runs: variant, data, recipe, grid, environment."""
    root, folder = data_ref(job.data, job.entry)
    return RunRecord(
        status=status, method=job.variant.method, variant_name=job.variant_name, variant_key=job.variant.key,
        train_key=job.variant.train_key, variant=jsonable(job.variant.fields()),
        grid={"name": job.grid, "axes": {k: jsonable(v) for k, v in job.axes}} if job.grid else None,
        dataset=job.dataset_name, category=job.category, data_root=root, data_path=folder, seed=job.seed,
        recipe=job.recipe, epochs=job.n_epochs,
        recipe_fields={k: v for k, v in dataclasses.asdict(get_recipe(job.recipe)).items() if k != "name"},
        env={**hardware(device), "software": software(), "git_revision": git_revision()})


def _train_or_load(job: Job, detector, split, images, device, results, progress) -> dict:
    """The group's student: loaded from its checkpoint where one exists, else trained and saved."""
    ckpt = job.checkpoint_path(results)
    if ckpt.is_file():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False)
        for b, state in zip(detector.branches, saved["students"]):
            b.student.load_state_dict(state)
        return {**saved["summary"], "student": "checkpoint", "reused_checkpoint": True}
    recipe = get_recipe(job.recipe)
    train_idx, val_idx = data_mod.train_val_indices(len(split.train), job.seed, recipe.val_fraction)
    if recipe.max_train_images and len(train_idx) > recipe.max_train_images:
        train_idx = sorted(random.Random(job.seed).sample(train_idx, recipe.max_train_images))
    learn = detector.fit_fn or fit
    summary = learn(detector, images[train_idx], images[val_idx], recipe, job.n_epochs,
                    job.seed, device=device, progress=progress, desc=job.describe())
    summary = {**dataclasses.asdict(summary), "n_train": len(train_idx), "n_val": len(val_idx)}
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"students": [b.student.state_dict() for b in detector.branches], "summary": summary}, tmp)
    tmp.replace(ckpt)
    return {**summary, "student": "trained", "reused_checkpoint": False}


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
    for name, maps in ev.layer_maps.items():   # each branch's Eq. 9-10 map before fusion and blur
        arrays[f"map_{name}"] = upsample_sum([d[pick] for d in maps], (EXAMPLE_SIZE,) * 2).half().numpy()
    out = path.with_suffix(".npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)
    return out.name


@dataclass
class _TestSet:
    split: data_mod.Split
    images: torch.Tensor        # uint8, at the variant's image size
    masks: np.ndarray
    labels: np.ndarray


class StudentGroup:
    """Jobs that share one trained student (they differ only in evaluation fields: score, fusion,
    blur, map weighting). The student is trained once, or loaded from its checkpoint; each branch
    map set is computed once per map weighting; then every job is scored and recorded. A record's
    `train.student` says truthfully where its student came from: `trained` (by this job),
    `sibling` (trained in this group for an earlier job), or `checkpoint` (read from disk)."""

    def __init__(self, jobs: list[Job], results: str | Path = "results", device: str = "cpu",
                 weights: dict[str, str] | None = None, progress: bool = True):
        if len({j.student_key for j in jobs}) != 1:
            raise ValueError("a student group's jobs must share one student (Job.student_key)")
        self.jobs, self.results, self.device = jobs, Path(results), device
        self.weights, self.progress = weights, progress
        self._trained = None      # (detector whose students are trained, training summary)
        self._maps: dict[str, list[torch.Tensor]] = {}

    def _student(self, test: _TestSet):
        if self._trained is None:
            job = self.jobs[0]
            seed_everything(job.seed)  # the students' initial weights belong to the run's seed
            detector = build_detector(job.variant, self.weights)
            train_images = data_mod.load_images(test.split.train, job.variant.image_size)
            summary = _train_or_load(job, detector, test.split, train_images, self.device, self.results,
                                     self.progress)
            self._trained = (detector, summary)
            return self._trained
        detector, summary = self._trained
        return detector, summary if summary["student"] == "checkpoint" else {**summary, "student": "sibling"}

    def _test_set(self) -> _TestSet:
        job = self.jobs[0]
        split = data_mod.load_split(job.data, job.category)
        size = job.variant.image_size
        return _TestSet(split, data_mod.load_images(split.test, size), data_mod.load_masks(split.test, size).numpy(),
                        np.array([s.label for s in split.test]))

    def run_one(self, job: Job, test: _TestSet) -> RunRecord:
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        trained, summary = self._student(test)
        detector = build_detector(job.variant, self.weights)
        for b, src in zip(detector.branches, trained.branches):
            b.student.load_state_dict(src.student.state_dict())
        weighting = job.variant.map_weighting   # branch maps depend on the student and on it alone
        if weighting not in self._maps:
            self._maps[weighting] = branch_maps(detector, test.images, self.device)
        ev = score_and_measure(detector, self._maps[weighting], test.labels, test.masks)
        path = job.record_path(self.results)
        record = dataclasses.replace(
            job_record(job, self.device), metrics=ev.metrics, metric_settings=METRIC_SETTINGS,
            map_path=detector.map_path, train=summary, teachers=teacher_sources(detector),
            implementation=detector.implementation,
            layout=test.split.layout, n_test=len(test.split.test), n_test_defective=int(test.labels.sum()),
            test={"labels": test.labels.tolist(), "scores": ev.scores.tolist(),
                  "defect": [s.defect for s in test.split.test]},
            examples=_examples(job, test.split, test.images, test.masks, ev, path),
            started=started.isoformat(timespec="seconds"), wall_s=round(time.perf_counter() - t0, 2))
        write(record, path)
        return record

    def run(self) -> dict[str, str]:
        """Every job of the group; a job that fails is recorded as failed with its error (and, when
        the data or the student failed, so is every job of the group). -> job: "ok" or "failed: ..."."""
        outcomes = {}
        try:
            test = self._test_set()
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - any failure becomes a failed record
            return {j.describe(): write_failure(j, err, self.results, self.device) for j in self.jobs}
        for job in self.jobs:
            try:
                self.run_one(job, test)
                outcomes[job.describe()] = "ok"
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001
                outcomes[job.describe()] = write_failure(job, err, self.results, self.device)
        return outcomes


def run_job(job: Job, results: str | Path = "results", device: str = "cpu",
            weights: dict[str, str] | None = None, progress: bool = True) -> RunRecord:
    """Train (or load) and evaluate one job and write its record; returns the record. Raises on failure."""
    group = StudentGroup([job], results, device, weights, progress)
    return group.run_one(job, group._test_set())


def write_failure(job: Job, err: BaseException, results: str | Path = "results", device: str = "cpu") -> str:
    """Record JOB as failed with ERR; returns the outcome line."""
    record = dataclasses.replace(job_record(job, device, status="failed"), error=f"{type(err).__name__}: {err}",
                                 traceback=traceback.format_exc(limit=-6))
    write(record, job.record_path(results))
    return f"failed: {record.error}"
