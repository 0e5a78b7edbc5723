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

from bench.data import DataError, detect_layout
from bench.env import check_device
from bench.peers import check_peers
from bench.errors import BenchError, UsageError
from bench.run import Job, run_job, write_failure
from bench.slurm import SlurmOptions, run_array
from bench.store import check_results_folder, read_records
from bench.train import get_recipe
from bench.variants import Variant, create_variant

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
# Dataset entries every grid shares; a grid file's own [datasets] table adds or overrides entries.
SHARED_DATASETS = ABLATIONS / "datasets.toml"
GRID_KEYS = ("description", "variants", "recipe", "seeds", "axes", "datasets")
EXECUTORS = ("local", "slurm")


class GridError(BenchError, ValueError):
    pass


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise GridError(f"{path}: not valid TOML ({err})") from err


def list_grids() -> list[tuple[str, str]]:
    return [(p.stem, _read_toml(p).get("description", "")) for p in sorted(ABLATIONS.glob("*.toml"))
            if p != SHARED_DATASETS]


def load_grid(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        path = ABLATIONS / f"{name_or_path}.toml"
    if not path.is_file() or path.resolve() == SHARED_DATASETS.resolve():
        raise GridError(f"no grid {name_or_path!r}: known grids are {[n for n, _ in list_grids()]}")
    spec = _read_toml(path)
    unknown = [k for k in spec if k not in GRID_KEYS]
    if unknown:
        raise GridError(f"{path}: unknown keys {unknown}; a grid file has {list(GRID_KEYS)}")
    shared = _read_toml(SHARED_DATASETS).get("datasets", {}) if SHARED_DATASETS.is_file() else {}
    spec["datasets"] = {**shared, **spec.get("datasets", {})}
    spec["name"] = path.stem
    spec["path"] = str(path)
    return spec


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word; the Variant field's type decides what it means


def split_items(text: str | None) -> list[str]:
    """'a=1,layers=[1,2],b=x' -> ['a=1', 'layers=[1,2]', 'b=x']: commas inside brackets stay."""
    items, depth, cur = [], 0, ""
    for ch in text or "":
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [i.strip() for i in [*items, cur] if i.strip()]


def parse_overrides(items: list[str] | None) -> dict:
    """['teacher=tf_efficientnet_lite0', 'alpha=0.5'] -> fields, values parsed as TOML."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--set expects FIELD=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def _entry_names(entries: dict) -> list[str]:
    return [k for k, v in entries.items() if isinstance(v, dict)]


def _generate(name: str, entry: dict) -> None:
    kind = entry.get("generate")
    if kind != "synthetic":
        raise GridError(f"dataset entry {name!r}: unknown generator {kind!r} (known: synthetic)")
    from bench.synthetic import make_dataset
    for path in entry.get("paths", []):
        make_dataset(path)


def _missing(spec: dict, path: str, name: str | None, is_default: bool) -> str:
    """What is missing, where the public datasets come from, and how to point at data (or generate it)."""
    entries = spec.get("datasets", {})
    names = _entry_names(entries)
    if name is None:
        what = f"--data {path}: no such folder, and not a dataset entry"
    else:
        default = " (the grid's default)" if is_default else ""
        what = f"dataset entry {name!r}{default} is not on this machine: {path} does not exist"
    sources = "; ".join(e["source"] for e in entries.values() if isinstance(e, dict) and "http" in e.get("source", ""))
    return (f"{what}.\n"
            f"  The suite downloads no dataset: get {sources}, and unpack it there.\n"
            f"  Then --data PATH (a folder in the MVTec AD / BTAD layout, or your own) or --data NAME "
            f"({', '.join(names)}); --data demo runs the grid now on generated data.")


def _datasets(spec: dict, data: list[str] | None, categories: list[str] | None
              ) -> list[tuple[str, list[str], dict]]:
    """(folder, categories, variant defaults) per dataset folder; every folder and category checked."""
    entries = spec.get("datasets", {})
    chosen = data or [entries.get("default", "")]
    out = []
    for item in chosen:
        entry = entries.get(item) if item != "default" else None
        if isinstance(entry, dict):
            if entry.get("generate"):
                _generate(item, entry)
            cats = categories or entry.get("categories")
            out += [(p, cats, item, entry.get("variant", {})) for p in entry.get("paths", [])]
        elif item:
            out.append((item, categories, None, {}))
        else:
            raise GridError(f"grid {spec['name']!r} names no default dataset: pass --data PATH or one of "
                            f"{_entry_names(entries)}")
    resolved = []
    for path, cats, name, defaults in out:
        if not Path(path).exists():
            raise DataError(_missing(spec, path, name, is_default=not data))
        layout, found = detect_layout(Path(path))
        unknown = [c for c in cats or [] if c not in found]
        if unknown:
            raise DataError(f"unknown categories {unknown} in {path}: available are {found}")
        resolved.append((path, cats or found, defaults))
    return resolved


def default_results(spec: dict, data: list[str] | None) -> str:
    """Where records go when --results is not given: "results", unless every chosen dataset entry
    names its own folder (the generated demo data keeps its records out of the committed ones)."""
    entries = spec.get("datasets", {})
    chosen = [entries.get(d) for d in data or [entries.get("default", "")]]
    folders = {e.get("results") if isinstance(e, dict) else None for e in chosen}
    return folders.pop() if len(folders) == 1 and None not in folders else "results"


def _applicable(defaults: dict, base: str) -> dict:
    """A dataset entry's variant fields, only where the base preset has the field (not None)."""
    from bench.variants import PRESETS
    preset = PRESETS.get(base)
    return {k: v for k, v in (defaults or {}).items() if preset is None or getattr(preset, k, None) is not None}


def grid_variants(spec: dict, overrides: dict | None = None, defaults: dict | None = None
                  ) -> list[tuple[str, Variant]]:
    """The grid's distinct variants (base presets x axes), labelled by what the axes set."""
    axes = {k: v for k, v in spec.get("axes", {}).items() if k != "recipe"}
    fields = {f.name for f in dataclasses.fields(Variant)}
    unknown = [k for k in [*axes, *(overrides or {}), *(defaults or {})] if k not in fields]
    if unknown:
        raise GridError(f"grid {spec['name']!r}: unknown variant fields {unknown}; fields are {sorted(fields)}")
    bad_axes = [k for k, v in axes.items() if not isinstance(v, list) or not v]
    if bad_axes:
        raise GridError(f"grid {spec['name']!r}: axes {bad_axes} must be non-empty lists of values")
    variants: dict[str, tuple[str, Variant]] = {}
    for base in spec.get("variants", ["reduced"]):
        for combo in itertools.product(*axes.values()) if axes else [()]:
            changes = {**_applicable(defaults, base), **dict(zip(axes, combo)), **(overrides or {})}
            try:
                v = create_variant(base, **changes)
            except (ValueError, KeyError) as err:
                shown = {**dict(zip(axes, combo)), **(overrides or {})}
                raise GridError(f"grid {spec['name']!r}: {base}{' with ' + str(shown) if shown else ''}: "
                                f"{err}") from err
            label = base + "".join(f" {k}={_short(val)}" for k, val in zip(axes, combo))
            variants.setdefault(v.key, (label, v))
    return list(variants.values())


def expand(spec: dict, data: list[str] | None = None, categories: list[str] | None = None,
           seeds: list[int] | None = None, epochs: int | None = None, recipe: str | None = None,
           overrides: dict | None = None) -> list[Job]:
    """Every (variant x dataset x category x seed) job of the grid, in a stable order. Everything a
    job needs is checked here, before any job runs: fields, recipes, seeds, epochs, data folders."""
    recipes = [recipe] if recipe else spec.get("axes", {}).get("recipe", [spec.get("recipe", "quick")])
    for rec in recipes:
        get_recipe(rec)
    seeds = seeds if seeds is not None else spec.get("seeds", [0])
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise GridError(f"seeds must be whole numbers >= 0, got {seeds}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
        raise GridError(f"epochs must be a whole number >= 1, got {epochs!r}")
    grid_variants(spec, overrides)  # the grid's own fields, whatever the data
    jobs = []
    for path, cats, defaults in _datasets(spec, data, categories):
        variants = grid_variants(spec, overrides, defaults)
        for cat in cats:
            for seed in seeds:
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
    if executor not in EXECUTORS:
        raise GridError(f"unknown executor {executor!r}: use {' or '.join(EXECUTORS)}")
    if isinstance(jobs_per_device, bool) or not isinstance(jobs_per_device, int) or jobs_per_device < 1:
        raise GridError(f"--jobs-per-device must be a whole number >= 1, got {jobs_per_device!r}")
    if max_parallel < 1:
        raise GridError(f"--max-parallel must be a whole number >= 1, got {max_parallel!r}")
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
    failures = {k: v for k, v in outcomes.items() if v != "ok"}
    print_summary(jobs, results)
    if failures:
        print(f"\n{len(failures)} failed job(s) (recorded with their error; rerun retries them):")
        by_error: dict[str, list[str]] = {}
        for k, v in failures.items():
            by_error.setdefault(v, []).append(k)
        for error, keys in by_error.items():  # one line per distinct error, not per job
            print(f"  {keys[0]}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''}: {error}")
    return outcomes


def check_weights(jobs: list[Job], weights: dict | None) -> None:
    """Before any job: --weights names only backbones the jobs use, and every pretrained teacher that
    comes from the hub is fetched once here. Offline, that fails once, in a second, with what to do
    (not ~50 s of retries per job); a worker process then finds the weights in the hub's cache."""
    from bench.backbones import load_hub_model, resolve_weights
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
