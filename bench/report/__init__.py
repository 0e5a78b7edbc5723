"""The tables and figures behind the rendered pages. Notebooks only call these.

    frames         records as DataFrames; which runs a table takes (a preset's, a grid's)
    tables         Tables 1, 2, 4, 5, 6 beside the paper's (with anomalib's peers measured here); the
                   STPM/STFPM parity table; any grid's ablation table, from its file
    timing_tables  Table 3 and the timing comparisons (one timing run per row, ratios per round)
    figures        gallery, ROC curves, speed vs accuracy, a grid's axis plotted
    numbers        mean ± 95 % CI in percent; "not run"
    summary        results/SUMMARY.md, its sections in one list
    page           setup() and show() for the notebooks

Our cells are mean ± 95 % CI over seeds, in percent; a cell with no record says "not run".
The paper's figures come from `bench.paper` and are always labelled as the paper's.
"""
from bench import paper
from bench.grids import list_grids
from bench.report.figures import (ablation_plot, gallery, pareto_front, plottable_grids, roc_curves,
                                  speed_vs_accuracy)
from bench.report.frames import (METRICS, TEACHER_FIELDS, failed_runs, gallery_picks, is_canonical, load_runs, load_timing,
                                 ok_records, print_jobs_summary, provenance, runs_frame, runs_of_grid,
                                 runs_of_preset, seed_summary, teachers_label)
from bench.report.numbers import NOT_RUN, ci95, fmt_mean_ci
from bench.report.page import heading, setup, show
from bench.report.summary import write_summary
from bench.report.tables import (AUPRO_TITLE, ablation_table, paper_table, parity_table, product_effect,
                                 table1_layers, table2_reduced, table4_mixed, table5_pixel, table6_btad)
from bench.report.timing_tables import (table3_timing, timing_across_runs, timing_frame, timing_map_cost,
                                        timing_options, timing_ratios, timing_runs)

__all__ = ["AUPRO_TITLE", "METRICS", "NOT_RUN", "TEACHER_FIELDS", "ablation_plot", "ablation_table", "ci95",
           "failed_runs", "fmt_mean_ci", "gallery", "gallery_picks", "heading", "is_canonical", "list_grids", "load_runs", "load_timing",
           "ok_records", "paper", "paper_table", "parity_table", "product_effect", "pareto_front", "plottable_grids",
           "print_jobs_summary", "provenance",
           "roc_curves", "runs_frame", "runs_of_grid", "runs_of_preset", "seed_summary", "setup", "show",
           "speed_vs_accuracy", "table1_layers", "table2_reduced", "table3_timing", "table4_mixed",
           "table5_pixel", "table6_btad", "teachers_label", "timing_across_runs", "timing_frame", "timing_map_cost", "timing_options",
           "timing_ratios", "timing_runs", "write_summary"]
