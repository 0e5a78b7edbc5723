"""invoke tasks: thin wrappers over bench functions.

    invoke demo                        train + evaluate reduced, STPM and mixed on generated data
    invoke variants [--pattern 'mixed*']
    invoke ablate --grid layers [--data PATH] [--categories a,b] [--seeds 0,1,2] [--dry-run]
    invoke timing [--device cuda]
    invoke tables
    invoke test [--fast]
"""
from __future__ import annotations

import os
import sys

from invoke import Task, task

PY = sys.executable


def _csv(text: str | None, cast=str):
    return [cast(t) for t in text.split(",") if t] if text else None


def _weights(spec: str | None) -> dict:
    """--weights 'backbone=path,backbone2=path2'."""
    out = {}
    for item in _csv(spec) or []:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--weights expects BACKBONE=PATH, got {item!r}")
        out[name] = path
    return out


@task(help={"results": "results folder", "epochs": "epochs per run (default: the demo's 12)",
            "weights": "BACKBONE=PATH[,...] local teacher weight files"})
def demo(c, results="results", epochs=None, weights=None):
    """Generated texture-defect data -> reduced, STPM and mixed -> a table and run records."""
    from bench.demo import run_demo
    run_demo(results=results, epochs=int(epochs) if epochs else None, weights=_weights(weights))


@task(help={"pattern": "glob over registered names"})
def variants(c, pattern="*"):
    """List the registry of variants with their keys."""
    from bench.variants import PRESETS, list_variants
    for name in list_variants(pattern):
        v = PRESETS[name]
        print(f"{name:16s} {v.key}  {v.describe()}")


class _Task(Task):
    """invoke picks short flags from an option's letters and would give '-' (from 'slurm-') to one:
    '--' is the command line's own separator."""

    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, taken_names | {"-"})


@task(klass=_Task, iterable=["slurm_setup"],
      help={"grid": "grid file name in ablations/ (or a path)", "data": "dataset folder(s), comma-separated",
            "categories": "comma-separated categories", "seeds": "comma-separated seeds",
            "epochs": "epochs per run", "recipe": "training recipe (paper, official, quick)",
            "device": "cpu, cuda, cuda:1 ...", "executor": "local or slurm", "dry_run": "list the jobs only",
            "force": "recompute jobs that have records", "list": "list the grids",
            "results": "results folder", "weights": "BACKBONE=PATH[,...] local teacher weight files",
            "slurm_partition": "SLURM partition", "max_parallel": "SLURM array concurrency cap",
            "slurm_account": "SLURM account to charge", "slurm_time": "SLURM time limit per job, minutes",
            "slurm_cpus": "SLURM CPUs per job (default: the partition's)",
            "slurm_gpus": "SLURM GPUs per job (default: 1 with --device cuda, else none)",
            "slurm_setup": "shell line run before each job, e.g. 'source /path/.venv/bin/activate' (repeatable)",
            "set": "FIELD=VALUE[,...] applied to every variant, e.g. teacher=tf_efficientnet_lite0",
            "jobs_per_device": "local executor: worker processes per device (several small trainings fill a large GPU)"})
def ablate(c, grid=None, data=None, categories=None, seeds=None, epochs=None, recipe=None, device=None,
           executor="local", dry_run=False, force=False, list=False, results="results", weights=None,
           slurm_partition=None, max_parallel=8, set=None, jobs_per_device=1, slurm_account=None, slurm_time=240,
           slurm_cpus=None, slurm_gpus=None, slurm_setup=None):
    """Expand a grid into jobs and run the ones without a record."""
    from bench import grid as grid_mod
    if list or not grid:
        for name, desc in grid_mod.list_grids():
            print(f"{name:10s} {desc}")
        return
    spec = grid_mod.load_grid(grid)
    jobs = grid_mod.expand(spec, data=_csv(data), categories=_csv(categories), seeds=_csv(seeds, int),
                           epochs=int(epochs) if epochs else None, recipe=recipe,
                           overrides=grid_mod.parse_overrides(_csv(set)))
    if dry_run:
        grid_mod.print_plan(jobs, results)
        return
    grid_mod.run_grid(jobs, results=results, device=device or "cpu", executor=executor, force=force,
                      weights=_weights(weights), slurm_partition=slurm_partition, max_parallel=int(max_parallel),
                      jobs_per_device=int(jobs_per_device), slurm_account=slurm_account,
                      timeout_min=int(slurm_time), slurm_cpus=int(slurm_cpus) if slurm_cpus else None,
                      slurm_gpus=int(slurm_gpus) if slurm_gpus is not None else None, slurm_setup=slurm_setup)


@task(help={"device": "cpu or cuda", "variants": "comma-separated registered variants",
            "batch_sizes": "comma-separated batch sizes (default CPU 1,8; CUDA 1,8,32,64)",
            "precisions": "fp32,fp16,bf16 (default CUDA all three, CPU fp32)",
            "precision_mode": "cast (weights and inputs cast once, as deployed; default) or autocast",
            "scopes": "network,map,end_to_end", "compile": "also time torch.compile",
            "channels_last": "also time channels_last",
            "no_cuda_graphs": "CUDA: time eager only (default: CUDA graphs beside eager at batch <= 8)",
            "peers": "also time anomalib's STFPM when installed", "rounds": "interleaved rounds per cell (>= 2)",
            "iters": "iterations per round (default: CUDA 50; CPU enough for ~0.4 s)",
            "warmup": "warm-up iterations", "threads": "CPU threads (default: all cores; recorded)",
            "map_paths": "lean,exact: which anomaly-map paths to time side by side (default lean)",
            "results": "results folder",
            "grid": "also time every distinct architecture of this grid (layers, pooling, teachers...)",
            "set": "FIELD=VALUE[,...] applied to every variant"})
def timing(c, device="cpu", variants=None, batch_sizes=None, precisions=None, precision_mode="cast", scopes=None,
           compile=False, channels_last=False, no_cuda_graphs=False, peers=True, rounds=7, iters=None,
           warmup=None, threads=None, map_paths="lean", results="results", grid=None, set=None):
    """Latency and throughput: subjects side by side in interleaved rounds; records in results/timing/."""
    from bench.grid import parse_overrides
    from bench.timing import run_timing
    run_timing(device=device, variants=_csv(variants), grid=grid, overrides=parse_overrides(_csv(set)),
               batch_sizes=_csv(batch_sizes, int), precisions=_csv(precisions), precision_mode=precision_mode,
               scopes=_csv(scopes), compile=compile, channels_last=channels_last,
               cuda_graphs=False if no_cuda_graphs else None, peers=peers, rounds=int(rounds),
               iters=int(iters) if iters else None, warmup=int(warmup) if warmup is not None else None,
               threads=int(threads) if threads else None, map_paths=tuple(_csv(map_paths)), results=results)


@task(help={"results": "results folder", "datasets": "comma-separated datasets to show (default: all)"})
def tables(c, results="results", datasets=""):
    """Execute the notebooks (Tables 1-6, figures, overview) into results/rendered/ as .ipynb and .html."""
    from bench.notebooks import render_all
    render_all(results=results, datasets=datasets)


@task(help={"fast": "skip the slow end-to-end tests"})
def test(c, fast=False):
    """The test suite (the README's test command; CI runs it with ../shared mandatory)."""
    marker = ["-m", "not slow"] if fast else []
    c.run(" ".join([PY, "-m", "pytest", "-q", *marker]), pty=False, env={**os.environ})
