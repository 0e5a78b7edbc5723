"""Execute the notebook templates with papermill and export them to HTML under results/rendered/."""
from __future__ import annotations

from pathlib import Path

from bench.report.summary import write_summary

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "notebooks"
ORDER = ("overview", "table1_layers", "table2_reduced", "table3_timing", "table4_mixed", "table5_pixel",
         "table6_btad", "ablations", "figures")


def render(name: str, results: str | Path = "results", datasets: str = "", out_dir: str | Path | None = None,
           html: bool = True) -> Path:
    import papermill
    results = Path(results).resolve()
    out_dir = Path(out_dir) if out_dir else results / "rendered"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(TEMPLATES / f"{name}.ipynb"), str(out),
                               parameters={"results": str(results), "datasets": datasets},
                               kernel_name="python3", cwd=str(ROOT), progress_bar=False)
    _strip_paths(out, results)
    if html:
        from nbconvert import HTMLExporter
        body, _ = HTMLExporter(exclude_input=True).from_filename(str(out))
        out.with_suffix(".html").write_text(body)
    return out


def _strip_paths(notebook: Path, results: Path) -> None:
    """Rendered notebooks are committed: keep the machine's absolute paths out of them."""
    text = notebook.read_text()
    notebook.write_text(text.replace(str(results), "results").replace(str(ROOT), "."))


def render_all(results: str | Path = "results", datasets: str = "", out_dir: str | Path | None = None,
               html: bool = True) -> list[Path]:
    outs = []
    for i, name in enumerate(ORDER, 1):
        print(f"[{i}/{len(ORDER)}] {name}", flush=True)
        outs.append(render(name, results, datasets, out_dir, html))
    print(f"rendered {len(outs)} notebooks into {Path(out_dir) if out_dir else Path(results) / 'rendered'}")
    print(f"summary: {write_summary(results, datasets)}")
    return outs
