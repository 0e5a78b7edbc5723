"""Grid files -> jobs -> run records. Resumable: a job whose record exists is skipped.

A grid file (`ablations/<name>.toml`):

    description = "..."
    variants = ["reduced"]                 # registered presets to start from
    recipe = "quick"
    seeds = [0, 1, 2]
    [axes]                                 # Variant fields (or "recipe"), crossed with each other
    layers = [[1, 2], [2, 3]]
    [datasets]                             # named dataset entries; --data picks one, or a path
    default = "mvtec_textures"
    mvtec_textures = { paths = ["data/mvtec_anomaly_detection"], categories = ["carpet", "grid"] }
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import sys
import tomllib
from pathlib import Path

from tabulate import tabulate
from tqdm.auto import tqdm

from bench.data import detect_layout
from bench.run import Job, run_job, write_failure
from bench.slurm import SlurmOptions, run_array
from bench.store import read_records
from bench.variants import Variant, create_variant

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"


class GridError(ValueError):
    pass


def list_grids() -> list[tuple[str, str]]:
    return [(p.stem, tomllib.loads(p.read_text()).get("description", ""))
            for p in sorted(ABLATIONS.glob("*.toml"))]


def load_grid(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        path = ABLATIONS / f"{name_or_path}.toml"
    if not path.is_file():
        raise GridError(f"no grid {name_or_path!r}: known grids are {[n for n, _ in list_grids()]}")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path}: {err}") from err
    spec["name"] = path.stem
    spec["path"] = str(path)
    return spec


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(items: list[str] | None) -> dict:
    """['teacher=tf_efficientnet_lite0', 'alpha=0.5'] -> fields, values parsed as TOML."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise GridError(f"--set expects FIELD=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _datasets(spec: dict, data: list[str] | None, categories: list[str] | None) -> list[tuple[str, list[str]]]:
    entries = spec.get("datasets", {})
    chosen = data or [entries.get("default", "")]
    out = []
    for item in chosen:
        entry = entries.get(item)
        if isinstance(entry, dict):
            cats = categories or entry.get("categories")
            out += [(p, cats) for p in entry.get("paths", [])]
        elif item:
            out.append((item, categories))
        else:
            raise GridError(f"grid {spec['name']!r} names no default dataset: pass --data PATH or one of "
                            f"{[k for k in entries if k != 'default']}")
    resolved = []
    for path, cats in out:
        layout, found = detect_layout(Path(path))
        resolved.append((path, cats or found))
    return resolved


def grid_variants(spec: dict, overrides: dict | None = None) -> list[tuple[str, Variant]]:
    """The grid's distinct variants (base presets x axes), labelled by what the axes set."""
    axes = {k: v for k, v in spec.get("axes", {}).items() if k != "recipe"}
    fields = {f.name for f in dataclasses.fields(Variant)}
    unknown = [k for k in [*axes, *(overrides or {})] if k not in fields]
    if unknown:
        raise GridError(f"grid {spec['name']!r}: unknown variant fields {unknown}; fields are {sorted(fields)}")
    variants: dict[str, tuple[str, Variant]] = {}
    for base in spec.get("variants", ["reduced"]):
        for combo in itertools.product(*axes.values()) if axes else [()]:
            changes = {**dict(zip(axes, combo)), **(overrides or {})}
            try:
                v = create_variant(base, **changes)
            except ValueError as err:
                raise GridError(f"grid {spec['name']!r}: {base} with {changes}: {err}") from err
            label = base + "".join(f" {k}={_short(val)}" for k, val in zip(axes, combo))
            variants.setdefault(v.key, (label, v))
    return list(variants.values())


def expand(spec: dict, data: list[str] | None = None, categories: list[str] | None = None,
           seeds: list[int] | None = None, epochs: int | None = None, recipe: str | None = None,
           overrides: dict | None = None) -> list[Job]:
    """Every (variant x dataset x category x seed) job of the grid, in a stable order."""
    recipes = [recipe] if recipe else spec.get("axes", {}).get("recipe", [spec.get("recipe", "quick")])
    variants = grid_variants(spec, overrides)
    jobs = []
    for path, cats in _datasets(spec, data, categories):
        for cat in cats:
            for seed in seeds or spec.get("seeds", [0]):
                for rec in recipes:
                    for label, v in variants:
                        jobs.append(Job(label, v, str(path), cat, int(seed), rec, epochs))
    return jobs


def _short(value) -> str:
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def is_done(job: Job, results: str | Path) -> bool:
    path = job.record_path(results)
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "ok"
    except ValueError:
        return False


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


def run_one(job: Job, results: str, device: str, weights: dict | None, progress: bool = False) -> str:
    """Run a job, recording a failure instead of raising (one bad job never stops a grid)."""
    try:
        run_job(job, results, device=device, weights=weights, progress=progress)
        return "ok"
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - any failure becomes a failed record
        write_failure(job, err, results, device)
        return f"failed: {type(err).__name__}: {err}"


def _cuda_devices(device: str) -> list[str]:
    if device != "cuda":
        return [device]
    import torch
    n = torch.cuda.device_count()
    return [f"cuda:{i}" for i in range(n)] or ["cuda"]


def run_grid(jobs: list[Job], results: str | Path = "results", device: str = "cpu", executor: str = "local",
             force: bool = False, weights: dict | None = None, slurm_partition: str | None = None,
             max_parallel: int = 8, slurm_folder: str | Path | None = None, submitit_cluster: str | None = None,
             timeout_min: int = 240, jobs_per_device: int = 1, slurm_account: str | None = None,
             slurm_cpus: int | None = None, slurm_gpus: int | None = None,
             slurm_setup: list[str] | None = None) -> dict:
    results = str(results)
    _clean_partial_files(results)
    todo = [j for j in jobs if force or not is_done(j, results)]
    if force:  # recompute means retrain too, not reuse a student trained by older code
        for path in {j.checkpoint_path(results) for j in todo}:
            path.unlink(missing_ok=True)
    print(f"{len(jobs)} jobs, {len(jobs) - len(todo)} already recorded, {len(todo)} to run", flush=True)
    outcomes: dict[str, str] = {}
    if executor == "slurm":
        outcomes = _run_submitit(todo, results, device, weights, SlurmOptions(
            partition=slurm_partition, account=slurm_account, time_min=timeout_min, cpus_per_task=slurm_cpus,
            gpus=slurm_gpus, setup=tuple(slurm_setup or ()), max_parallel=max_parallel,
            folder=slurm_folder, cluster=submitit_cluster))
    elif executor == "local":
        devices = _cuda_devices(device) * max(1, jobs_per_device)
        if len(devices) > 1:
            outcomes = _run_pool(todo, results, devices, weights)
        else:
            bar = tqdm(todo, desc="grid", unit="job", file=sys.stdout, dynamic_ncols=True)
            for job in bar:
                bar.set_postfix_str(job.describe())
                outcomes[job.describe()] = run_one(job, results, devices[0], weights, progress=True)
            bar.close()
    else:
        raise GridError(f"unknown executor {executor!r}: use local or slurm")
    failures = {k: v for k, v in outcomes.items() if v != "ok"}
    print_summary(jobs, results)
    if failures:
        print(f"\n{len(failures)} failed job(s) (recorded with their error; rerun retries them):")
        for k, v in failures.items():
            print(f"  {k}: {v}")
    return outcomes


def student_groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that share one trained student (they differ only in evaluation fields), in grid order.
    A group goes to one worker: the student is trained once and its branch maps are reused."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.student_key, []).append(j)
    return list(groups.values())


# Each pool worker claims one device slot when it starts and keeps it: a group of jobs runs where
# its worker lives, so no two workers crowd one GPU while another idles.
_WORKER_DEVICE: str | None = None


def _claim_device(slots) -> None:
    global _WORKER_DEVICE
    _WORKER_DEVICE = slots.get()


def _run_group(jobs: list[Job], results: str, weights: dict | None) -> list[str]:
    return [run_one(j, results, _WORKER_DEVICE, weights) for j in jobs]


def _run_pool(jobs, results, devices, weights) -> dict:
    """One worker process per device slot (several slots per GPU where asked: small students leave
    most of a large GPU idle), each taking the next group of jobs that share a student."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for d in devices:
        slots.put(d)
    outcomes = {}
    with ProcessPoolExecutor(len(devices), mp_context=ctx, initializer=_claim_device, initargs=(slots,)) as pool:
        futures = {pool.submit(_run_group, g, results, weights): g for g in student_groups(jobs)}
        bar = tqdm(total=len(jobs), desc="grid", unit="job", file=sys.stdout)
        for fut in as_completed(futures):
            for job, outcome in zip(futures[fut], fut.result()):
                outcomes[job.describe()] = outcome
            bar.update(len(futures[fut]))
        bar.close()
    return outcomes


def _run_submitit(jobs, results, device, weights, opts: SlurmOptions) -> dict:
    try:
        import submitit  # noqa: F401
    except ImportError as err:
        raise GridError("the slurm executor needs submitit: pip install 'bench[cluster]'") from err
    return run_array(jobs, results, device, weights, opts)


def print_summary(jobs: list[Job], results: str | Path) -> None:
    from bench.report import seed_summary
    keys = {(j.variant.key, j.dataset_name, j.category, j.recipe, j.n_epochs) for j in jobs}
    recs = [r for r in read_records(Path(results) / "runs")
            if (r.get("variant_key"), r.get("dataset"), r.get("category"), r.get("recipe"), r.get("epochs")) in keys]
    table = seed_summary(recs)
    if len(table):
        print()
        print(tabulate(table, headers="keys", tablefmt="github", showindex=False))
