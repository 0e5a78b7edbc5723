"""What every rendered page starts with (`report.setup`) and how it shows a figure."""
from __future__ import annotations

import io

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, Markdown, display

from bench import paper
from bench.report.frames import load_runs, load_timing, ok_records


def setup(results: str = "results", datasets: str = "") -> tuple[list, list, list[str] | None]:
    """Load the records, say whose datasets these are, and return (runs, timing, datasets to keep);
    DATASETS is the notebooks' comma-separated parameter (empty: all)."""
    pd.set_option("display.max_colwidth", 250)
    runs, timing = load_runs(results), load_timing(results)
    keep = [d for d in datasets.split(",") if d] or None
    ours = sorted({r.dataset for r in ok_records(runs) if not keep or r.dataset in keep})
    display(Markdown(f"**Our datasets:** {', '.join(ours) or 'none recorded'} · **the paper's:** MVTec AD "
                     f"textures, BTAD 01 ({paper.GPU}). Where they differ, the paper's figures stand in their "
                     "own column or table and are not comparable to ours."))
    return runs, timing, keep


def show(fig, dpi: int = 60, fmt: str = "png") -> None:
    """A figure as one image at a fixed, modest resolution (JPEG for photo-like galleries): the
    rendered pages are committed, and each image is stored once, in its page."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    display(Image(buf.getvalue(), format=fmt))


def heading(text: str) -> None:
    display(Markdown(text))
