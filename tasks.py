"""invoke tasks: thin wrappers over bench functions.

    invoke demo                        train + evaluate reduced, STPM and mixed on generated data
    invoke variants [--pattern 'mixed*']
    invoke ablate --grid layers [--data PATH|NAME] [--categories a,b] [--seeds 0,1,2] [--dry-run]
    invoke timing [--device cuda]
    invoke tables
    invoke test [--fast]

The suite's own errors (bench.errors.BenchError: data, grid, variant, weights, recipe, device,
results folder, a bad option value) print one message and exit 2; a job or timing case that failed
makes the command exit 1 after the rest ran. BENCH_DEBUG=1 shows the traceback behind a message.
"""
from __future__ import annotations

import functools
import os
import sys
import warnings

from invoke import Exit, Task, task

PY = sys.executable
USAGE_EXIT = 2      # the command could not start: nothing ran
FAILED_EXIT = 1     # it ran, and some jobs or cases failed (recorded; the rest finished)


def _boundary(body):
    """The one place the suite's errors become a message and an exit status; anything else is a
    bug and keeps its traceback."""
    @functools.wraps(body)
    def wrapper(*args, **kwargs):
        from bench.errors import BenchError
        warnings.showwarning = _show_warning
        try:
            return body(*args, **kwargs)
        except BenchError as err:
            if os.environ.get("BENCH_DEBUG") == "1":
                raise
            raise Exit(f"error: {err}", code=USAGE_EXIT) from None
    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def _usage(message: str):
    from bench.errors import UsageError
    return UsageError(message)


def _csv(text: str | None, cast=str, option: str = "", minimum: int | None = None):
    """'a,b' -> ['a', 'b'] (None when not given); with CAST int, each a whole number >= MINIMUM."""
    if text is None or text is True or text == "":
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if cast is str:
        return items
    out = []
    for t in items:
        try:
            out.append(cast(t))
        except ValueError:
            raise _usage(f"{option} expects comma-separated whole numbers, got {text!r}") from None
        if minimum is not None and out[-1] < minimum:
            raise _usage(f"{option} must be >= {minimum}, got {out[-1]}")
    if not out:
        raise _usage(f"{option} expects comma-separated whole numbers, got {text!r}")
    return out


def _int(option: str, value, minimum: int):
    """An option's whole number >= MINIMUM, or None when not given. 0 is a value, not 'not given'."""
    if value is None:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise _usage(f"{option} expects a whole number, got {value!r}") from None
    if number < minimum:
        raise _usage(f"{option} must be >= {minimum}, got {number}")
    return number


def _weights(spec: str | None) -> dict:
    """--weights 'backbone=path,backbone2=path2': names known to timm, files that exist."""
    from bench.backbones import timm
    out = {}
    for item in _csv(spec) or []:
        name, _, path = item.partition("=")
        if not path or not name:
            raise _usage(f"--weights expects BACKBONE=PATH, got {item!r}")
        if not timm.is_model(name):
            raise _usage(f"--weights {item}: {name!r} is not a timm model name "
                         "(the teachers here: resnet18, efficientnet_b0, tf_efficientnet_lite0)")
        if not os.path.isfile(path):
            raise _usage(f"--weights {item}: file {path} does not exist")
        out[name] = path
    return out


@task(help={"results": "results folder (default results/demo, which git ignores)",
            "epochs": "epochs per run (default: the demo's 12)",
            "weights": "BACKBONE=PATH[,...] local teacher weight files"})
@_boundary
def demo(c, results="results/demo", epochs=None, weights=None):
    """Generated texture-defect data -> reduced, STPM and mixed -> a table and run records."""
    from bench.demo import demo_variants, run_demo
    from bench.store import check_results_folder
    epochs = _int("--epochs", epochs, 1)
    weights = _weights(weights)
    used = {b for v in demo_variants().values() for b in (v.teacher, v.teacher2) if b}
    if set(weights) - used:
        raise _usage(f"--weights names backbones {sorted(set(weights) - used)} that the demo does not use; "
                     f"it uses {sorted(used)}")
    check_results_folder(results)
    run_demo(results=results, epochs=epochs, weights=weights)


@task(help={"pattern": "glob over registered names"})
@_boundary
def variants(c, pattern="*"):
    """List the registry of variants with their keys."""
    from bench.variants import PRESETS, list_variants
    names = list_variants(pattern)
    if not names:
        raise _usage(f"no registered variant matches {pattern!r}; registered: {', '.join(list_variants())}")
    for name in names:
        v = PRESETS[name]
        print(f"{name:16s} {v.key}  {v.describe()}")


class _Task(Task):
    """invoke picks short flags from an option's letters and would give '-' (from 'slurm-') to one:
    '--' is the command line's own separator."""

    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, taken_names | {"-"})


@task(klass=_Task, iterable=["slurm_setup"],
      help={"grid": "grid file name in ablations/ (or a path)",
            "data": "dataset entry name(s) (mvtec_textures, btad, shared, demo) or folder(s), comma-separated",
            "categories": "comma-separated categories", "seeds": "comma-separated seeds",
            "epochs": "epochs per run", "recipe": "training recipe (paper, official, quick, demo)",
            "device": "cpu, cuda, cuda:1 ...", "executor": "local or slurm", "dry_run": "list the jobs only",
            "force": "recompute jobs that have records", "list": "list the grids",
            "results": "results folder (default results; results/demo for --data demo)",
            "weights": "BACKBONE=PATH[,...] local teacher weight files",
            "slurm_partition": "SLURM partition", "max_parallel": "SLURM array concurrency cap (default 8)",
            "slurm_account": "SLURM account to charge", "slurm_time": "SLURM time limit per job, minutes",
            "slurm_cpus": "SLURM CPUs per job (default: the partition's)",
            "slurm_gpus": "SLURM GPUs per job (default: 1 with --device cuda, else none)",
            "slurm_setup": "shell line run before each job, e.g. 'source /path/.venv/bin/activate' (repeatable)",
            "set": "FIELD=VALUE[,...] applied to every variant, e.g. teacher=tf_efficientnet_lite0",
            "jobs_per_device": "local executor: worker processes per device, default 1 (several small trainings fill a large GPU)"})
@_boundary
def ablate(c, grid=None, data=None, categories=None, seeds=None, epochs=None, recipe=None, device=None,
           executor="local", dry_run=False, force=False, list=False, results=None, weights=None,
           slurm_partition=None, max_parallel=None, set=None, jobs_per_device=None, slurm_account=None,
           slurm_time=None, slurm_cpus=None, slurm_gpus=None, slurm_setup=None):
    """Expand a grid into jobs and run the ones without a record; exits 1 if any job failed."""
    from bench import report, runner
    from bench.env import check_device
    from bench.grids import Grid, list_grids, parse_overrides, split_items
    from bench.slurm import SlurmOptions
    from bench.store import check_results_folder
    if list or not grid:
        for name, desc in list_grids():
            print(f"{name:10s} {desc}")
        return
    # every option checked before the grid expands (which may generate the demo data)
    if executor not in runner.EXECUTORS:
        raise _usage(f"unknown executor {executor!r}: use {' or '.join(runner.EXECUTORS)}")
    device = check_device(device or "cpu")
    seeds = _csv(seeds, int, "--seeds", minimum=0)
    epochs = _int("--epochs", epochs, 1)
    jobs_per_device = _int("--jobs-per-device", jobs_per_device, 1) or 1
    max_parallel = _int("--max-parallel", max_parallel, 1) or 8
    weights = _weights(weights)
    spec = Grid.load(grid)
    results = results or spec.default_results(_csv(data))
    check_results_folder(results, create=not dry_run)
    jobs = spec.jobs(data=_csv(data), categories=_csv(categories), seeds=seeds, epochs=epochs, recipe=recipe,
                     overrides=parse_overrides(split_items(set)))
    if dry_run:
        runner.print_plan(jobs, results)
        return
    slurm = SlurmOptions(partition=slurm_partition, account=slurm_account,
                         time_min=_int("--slurm-time", slurm_time, 1) or 240,
                         cpus_per_task=_int("--slurm-cpus", slurm_cpus, 1), gpus=_int("--slurm-gpus", slurm_gpus, 0),
                         setup=tuple(slurm_setup or ()), max_parallel=max_parallel)
    outcomes = runner.run_grid(jobs, results=results, device=device, executor=executor, force=force,
                               weights=weights, jobs_per_device=jobs_per_device, slurm=slurm)
    report.print_jobs_summary(jobs, results)
    failed = sum(v != "ok" for v in outcomes.values())
    if failed:
        raise Exit(f"{failed} of {len(outcomes)} job(s) failed (listed above, recorded with their error; "
                   "a rerun retries them)", code=FAILED_EXIT)


@task(help={"device": "cpu or cuda", "variants": "comma-separated registered variants",
            "batch_sizes": "comma-separated batch sizes (default CPU 1,8; CUDA 1,8,32,64)",
            "precisions": "fp32,fp16,bf16 (default CUDA all three, CPU fp32)",
            "precision_mode": "cast (weights and inputs cast once, as deployed; default) or autocast",
            "scopes": "network,map,end_to_end", "compile": "also time torch.compile",
            "channels_last": "also time channels_last",
            "no_cuda_graphs": "CUDA: time eager only (default: CUDA graphs beside eager at batch <= 8)",
            "peers": "also time anomalib's STFPM when installed", "rounds": "interleaved rounds per cell (>= 2)",
            "iters": "iterations per round (>= 1; default: CUDA 50; CPU enough for ~0.4 s)",
            "warmup": "warm-up iterations (>= 0)", "threads": "CPU threads (default: all cores; recorded)",
            "backends": "eager,onnxruntime: also export to ONNX and time ONNX Runtime (CPU) in the same rounds",
            "results": "results folder",
            "keep_freed_memory": "glibc malloc keeps freed memory, as a deployment's allocator does (default; "
                                 "--no-keep-freed-memory times glibc's defaults, which fault pages in on every large tensor)",
            "grid": "also time every distinct architecture of this grid (layers, pooling, teachers...)",
            "set": "FIELD=VALUE[,...] applied to every variant"},
      auto_shortflags=False)  # -h is help, not --channels-last
@_boundary
def timing(c, device="cpu", variants=None, batch_sizes=None, precisions=None, precision_mode="cast", scopes=None,
           compile=False, channels_last=False, no_cuda_graphs=False, peers=True, rounds=None, iters=None,
           warmup=None, threads=None, backends="eager", results="results", grid=None, set=None,
           keep_freed_memory=True):
    """Latency and throughput, subjects side by side in interleaved rounds; one record per case in
    results/timing/; exits 1 if any case failed."""
    from bench.grids import parse_overrides, split_items
    from bench.store import check_results_folder
    from bench.timing import run_timing
    from bench.variants import PRESETS
    names = _csv(variants)
    unknown = [n for n in names or [] if n not in PRESETS]
    if unknown:
        raise _usage(f"unknown variants {unknown}; registered: {', '.join(sorted(PRESETS))}")
    batch_sizes = _csv(batch_sizes, int, "--batch-sizes", minimum=1)
    iters, warmup = _int("--iters", iters, 1), _int("--warmup", warmup, 0)
    rounds, threads = _int("--rounds", rounds, 2) or 7, _int("--threads", threads, 1)
    check_results_folder(results)
    records = run_timing(device=device, variants=names, grid=grid, overrides=parse_overrides(split_items(set)),
                         batch_sizes=batch_sizes, precisions=_csv(precisions), precision_mode=precision_mode,
                         scopes=_csv(scopes), compile=compile, channels_last=channels_last,
                         cuda_graphs=False if no_cuda_graphs else None, peers=peers, rounds=rounds,
                         iters=iters, warmup=warmup, threads=threads, backends=tuple(_csv(backends) or ("eager",)), results=results,
                         keep_freed_memory=keep_freed_memory)
    failed = [r for r in records if r.status == "failed"]
    if failed:
        first = failed[0]
        raise Exit(f"{len(failed)} of {len(records)} timing case(s) failed (recorded), e.g. {first.name} "
                   f"{first.scope} b{first.batch_size} {first.precision}: {first.error}",
                   code=FAILED_EXIT)


@task(help={"results": "results folder", "datasets": "comma-separated datasets to show (default: all)"})
@_boundary
def tables(c, results="results", datasets=""):
    """Execute the notebooks (Tables 1-6, every grid, figures, overview) into one HTML page each under
    results/rendered/, and write results/SUMMARY.md."""
    from pathlib import Path

    from bench.notebooks import render_all
    from bench.report import load_runs
    from bench.store import check_results_folder
    folder = check_results_folder(results, create=False)
    if not folder.exists():
        raise _usage(f"--results {results} does not exist")
    if not (folder / "runs").is_dir() and not (folder / "timing").is_dir():
        raise _usage(f"--results {results}: no runs/ or timing/ folder of records there (nothing to render)")
    wanted = _csv(datasets) or []
    if wanted:
        known = sorted({r.dataset for r in load_runs(Path(results)) if r.dataset})
        unknown = [d for d in wanted if d not in known]
        if unknown:
            raise _usage(f"--datasets {unknown}: no run records of those datasets in {results}; "
                         f"recorded are {known}")
    render_all(results=results, datasets=",".join(wanted))


@task(help={"fast": "skip the slow end-to-end tests"})
def test(c, fast=False):
    """The test suite (the README's test command; CI runs it with ../shared mandatory)."""
    marker = ["-m", "not slow"] if fast else []
    c.run(" ".join([PY, "-m", "pytest", "-q", *marker]), pty=False, env={**os.environ})
