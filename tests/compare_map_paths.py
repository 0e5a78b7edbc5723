"""Re-evaluate trained students with today's map computation and print their metrics beside the ones
their records hold (computed when the records were made, by the convolution-and-interpolate code):
the real-data check that the separable-operator path gives the same numbers.

    python tests/compare_map_paths.py results/runs/kolektorsdd/kolektorsdd/reduced-*_quick-4ep_seed0.json ...

Each record's student comes from its checkpoint under results/checkpoints/ (kept by the grid run);
teacher weights resolve as in the run (BENCH_WEIGHTS_* or the packaged Lite0)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr
from tabulate import tabulate

from bench import data as data_mod
from bench.build import build_detector
from bench.evaluate import branch_maps, score_and_measure
from bench.run import Job
from bench.variants import variant_from_fields

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def compare(record_path: Path, results: Path = Path("results")) -> list:
    rec = json.loads(record_path.read_text())
    job = Job(rec["variant_name"], variant_from_fields(rec["variant"]), rec["data_root"], rec["category"],
              rec["seed"], rec["recipe"], rec["epochs"], rec["dataset"])
    det = build_detector(job.variant)
    saved = torch.load(job.checkpoint_path(results), map_location="cpu", weights_only=False)
    for b, state in zip(det.branches, saved["students"]):
        b.student.load_state_dict(state)
    split = data_mod.load_split(job.data, job.category)
    images = data_mod.load_images(split.test, job.variant.image_size)
    masks = data_mod.load_masks(split.test, job.variant.image_size).numpy()
    labels = np.array([s.label for s in split.test])
    ev = score_and_measure(det, branch_maps(det, images), labels, masks)
    rho = spearmanr(rec["test"]["scores"], ev.scores).statistic
    return [rec["dataset"], rec["method"], rec["seed"], rec.get("map_path", "exact (unnamed)"),
            *(f"{rec['metrics'][m]:.4f} / {ev.metrics[m]:.4f} ({ev.metrics[m] - rec['metrics'][m]:+.5f})"
              for m in METRICS), f"{rho:.6f}"]


if __name__ == "__main__":
    rows = [compare(Path(p)) for p in sys.argv[1:]]
    print(tabulate(rows, headers=["dataset", "method", "seed", "record's map path",
                                  *(f"{m}: record / now (diff)" for m in METRICS), "Spearman of scores"],
                   tablefmt="github"))
