"""Re-evaluate trained students with both map paths (lean and exact) and print their metrics side
by side: the real-data check of the lean inference path.

    python tests/compare_map_paths.py results/runs/kolektorsdd/kolektorsdd/reduced-*_quick-4ep_seed0.json ...

Each record's student comes from its checkpoint under results/checkpoints/ (kept by the grid run);
teacher weights resolve as in the run (BENCH_WEIGHTS_* or the packaged Lite0)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate

from bench import data as data_mod
from bench.build import build_detector
from bench.evaluate import branch_maps, score_and_measure
from bench.data_entries import data_folder
from bench.jobs import Job
from bench.records import RunRecord
from bench.variants import Variant


def compare(record_path: Path, results: Path = Path("results")) -> list[list]:
    rec = RunRecord.from_dict(json.loads(record_path.read_text()))
    job = Job(rec.variant_name, Variant.from_record(rec), str(data_folder(rec.data_root, rec.data_path)),
              rec.category, rec.seed, rec.recipe, rec.epochs, rec.dataset)
    det = build_detector(job.variant)
    saved = torch.load(job.checkpoint_path(results), map_location="cpu", weights_only=False)
    for b, state in zip(det.branches, saved["students"]):
        b.student.load_state_dict(state)
    split = data_mod.load_split(job.data, job.category)
    images = data_mod.load_images(split.test, job.variant.image_size)
    masks = data_mod.load_masks(split.test, job.variant.image_size).numpy()
    labels = np.array([s.label for s in split.test])
    rows, scores = [], {}
    for path in ("exact", "lean"):
        det.map_path = path
        ev = score_and_measure(det, branch_maps(det, images), labels, masks)
        scores[path] = ev.scores
        rows.append([rec.dataset, rec.method, rec.seed, path, det.effective_map_path,
                     *(round(ev.metrics[m], 4) for m in ("image_auroc", "pixel_auroc", "aupro"))])
    from scipy.stats import spearmanr
    rho = spearmanr(scores["exact"], scores["lean"]).statistic
    diff = [round(a - b, 4) for a, b in zip(rows[1][5:], rows[0][5:])]
    rows.append([rec.dataset, rec.method, rec.seed, "lean - exact", f"Spearman {rho:.5f}", *diff])
    return rows


if __name__ == "__main__":
    rows = [r for p in sys.argv[1:] for r in compare(Path(p))]
    print(tabulate(rows, headers=["dataset", "method", "seed", "path", "effective", "image AUROC", "pixel AUROC",
                                  "AUPRO"], tablefmt="github"))
