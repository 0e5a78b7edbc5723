"""Jobs -> run records, on an executor: this process, several worker processes (one per device
slot), or a SLURM array. Resumable: a job whose ok record exists is skipped.

Jobs run in student groups (bench.jobs.student_groups): variants that differ only in evaluation
fields share one trained student, so a group always runs in one process (bench.run.StudentGroup).
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch
from tabulate import tabulate
from tqdm.auto import tqdm

from bench.backbones import load_hub_model, resolve_weights
from bench.env import check_device
from bench.errors import GridError, UsageError
from bench.jobs import Job, student_groups
from bench.peers import check_peers
from bench.run import StudentGroup
from bench.slurm import SlurmOptions, run_array
from bench.store import check_results_folder

EXECUTORS = ("local", "slurm")


def is_done(job: Job, results: str | Path) -> bool:
    path = job.record_path(results)
    if not path.is_file():
        return False
    try:
        rec = json.loads(path.read_text())
    except (ValueError, OSError):  # a broken file where the record belongs: the job runs again
        return False
    return isinstance(rec, dict) and rec.get("status") == "ok"


def print_plan(jobs: list[Job], results: str | Path = "results") -> None:
    rows = [[i + 1, j.variant_name, j.variant.key, j.dataset_name, j.category, j.seed, j.recipe, j.n_epochs,
             "done" if is_done(j, results) else "to run"] for i, j in enumerate(jobs)]
    print(tabulate(rows, headers=["#", "variant", "key", "dataset", "category", "seed", "recipe", "epochs", "state"]))
    todo = sum(r[-1] == "to run" for r in rows)
    print(f"{len(jobs)} jobs, {len(jobs) - todo} already recorded, {todo} to run")


def _clean_partial_files(results: str | Path) -> None:
    """Temporary files of a killed writer; the finished records beside them are untouched."""
    for folder in ("runs", "checkpoints"):
        for tmp in (Path(results) / folder).rglob("*.tmp*"):
            tmp.unlink(missing_ok=True)


def check_weights(jobs: list[Job], weights: dict | None) -> None:
    """Before any job: --weights names only backbones the jobs use, and every pretrained teacher that
    comes from the hub is fetched once here. Offline, that fails once, in a second, with what to do
    (not ~50 s of retries per job); a worker process then finds the weights in the hub's cache."""
    used = sorted({b for j in jobs for b, init in ((j.variant.teacher, j.variant.teacher_init),
                                                     (j.variant.teacher2, j.variant.teacher2_init))
                   if b and init == "pretrained"})
    unknown = [name for name in weights or {} if name not in used]
    if unknown and jobs:
        raise UsageError(f"--weights names backbones {unknown} that no pretrained teacher of these jobs uses; "
                         f"they use {used or 'none'}")
    for backbone in used:
        if resolve_weights(backbone, "pretrained", weights).kind == "hub":
            load_hub_model(backbone)


def run_grid(jobs: list[Job], results: str | Path = "results", device: str = "cpu", executor: str = "local",
             force: bool = False, weights: dict | None = None, jobs_per_device: int = 1,
             slurm: SlurmOptions | None = None) -> dict:
    """Run the jobs without an ok record (all of them with FORCE) -> job: "ok" or "failed: ...";
    a failed job is recorded with its error and never stops the others."""
    if executor not in EXECUTORS:
        raise GridError(f"unknown executor {executor!r}: use {' or '.join(EXECUTORS)}")
    if isinstance(jobs_per_device, bool) or not isinstance(jobs_per_device, int) or jobs_per_device < 1:
        raise GridError(f"--jobs-per-device must be a whole number >= 1, got {jobs_per_device!r}")
    slurm = slurm or SlurmOptions()
    if slurm.max_parallel < 1:
        raise GridError(f"--max-parallel must be a whole number >= 1, got {slurm.max_parallel!r}")
    check_device(device)
    check_results_folder(results)
    results = str(results)
    _clean_partial_files(results)
    todo = [j for j in jobs if force or not is_done(j, results)]
    check_weights(todo, weights)
    check_peers(j.variant for j in todo)
    if force:  # recompute means retrain too, not reuse a student trained by older code
        for path in {j.checkpoint_path(results) for j in todo}:
            path.unlink(missing_ok=True)
    print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already recorded, {len(todo)} to run", flush=True)
    if executor == "slurm":
        outcomes = run_array(todo, results, device, weights, slurm)
    else:
        slots = _device_slots(device) * jobs_per_device
        outcomes = (_run_pool(todo, results, slots, weights) if len(slots) > 1
                    else _run_here(todo, results, slots[0], weights))
    _print_failures(outcomes)
    return outcomes


def _run_here(jobs: list[Job], results: str, device: str, weights: dict | None) -> dict:
    outcomes: dict[str, str] = {}
    bar = tqdm(total=len(jobs), desc="grid", unit="job", file=sys.stdout, dynamic_ncols=True)
    for group in student_groups(jobs):
        bar.set_postfix_str(group[0].describe())
        outcomes.update(StudentGroup(group, results, device, weights, progress=True).run())
        bar.update(len(group))
    bar.close()
    return outcomes


def _device_slots(device: str) -> list[str]:
    """`cuda` means every visible GPU; any other device is itself."""
    if device != "cuda":
        return [device]
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cuda"]


def _run_group_on_a_slot(jobs: list[Job], results: str, weights: dict | None, slots) -> dict:
    """A worker's task: borrow a device slot, run the group there, give the slot back. A slot is
    held by one group at a time, so no two workers crowd one slot while another idles."""
    device = slots.get()
    try:
        return StudentGroup(jobs, results, device, weights, progress=False).run()
    finally:
        slots.put(device)


def _run_pool(jobs: list[Job], results: str, slots: list[str], weights: dict | None) -> dict:
    """One worker process per device slot (several per GPU where asked: small students leave most of
    a large GPU idle), each taking the next group of jobs that share a student."""
    ctx = mp.get_context("spawn")
    outcomes = {}
    with ctx.Manager() as manager, ProcessPoolExecutor(len(slots), mp_context=ctx) as pool:
        queue = manager.Queue()
        for slot in slots:
            queue.put(slot)
        futures = {pool.submit(_run_group_on_a_slot, g, results, weights, queue): g for g in student_groups(jobs)}
        bar = tqdm(total=len(jobs), desc="grid", unit="job", file=sys.stdout)
        for fut in as_completed(futures):
            outcomes.update(fut.result())
            bar.update(len(futures[fut]))
        bar.close()
    return {j.describe(): outcomes[j.describe()] for j in jobs}


def _print_failures(outcomes: dict) -> None:
    failures = {k: v for k, v in outcomes.items() if v != "ok"}
    if not failures:
        return
    print(f"\n{len(failures)} failed job(s) (recorded with their error; rerun retries them):")
    by_error: dict[str, list[str]] = {}
    for k, v in failures.items():
        by_error.setdefault(v, []).append(k)
    for error, keys in by_error.items():  # one line per distinct error, not per job
        print(f"  {keys[0]}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''}: {error}")
