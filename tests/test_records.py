"""The record schema: every committed shape reads as the current one, numbers untouched; new
records name their grid and their data root, never a machine path."""
import json
import shutil
from pathlib import Path

import pytest

from bench.grids import Grid
from bench.records import (RUN_SCHEMA, TIMING_SCHEMA, RunRecord, TimingRecord, flag_leaked_channels_last, migrate,
                           read_runs, read_timing)
from bench.run import job_record
from bench.synthetic import make_dataset
from bench.variants import Variant

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _numbers(obj, prefix=""):
    """Every number in a JSON value, by its path."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _numbers(val, f"{prefix}.{key}").items()}
    if isinstance(obj, list):
        return {k: v for i, val in enumerate(obj) for k, v in _numbers(val, f"{prefix}[{i}]").items()}
    return {prefix: obj} if isinstance(obj, (int, float)) and not isinstance(obj, bool) else {}


def test_committed_run_records_read_in_the_current_schema():
    runs = read_runs(RESULTS / "runs")
    assert runs and all(r.schema_version == RUN_SCHEMA for r in runs)
    for r in runs:
        assert r.env["device"] and r.env["software"]["torch"] and "hardware" not in r.extra
        assert r.data_root and r.data_path and not r.data_path.startswith("/")
        assert all(not (t.get("file") or "").startswith("/") for t in r.teachers)
        Variant.from_record(r)  # every committed variant still builds


def test_committed_timing_records_read_in_the_current_schema():
    timing = read_timing(RESULTS / "timing")
    assert timing and all(t.schema_version == TIMING_SCHEMA for t in timing)
    assert all(isinstance(t.teachers, list) and t.teachers for t in timing if t.ok)
    rounds = [t for t in timing if t.rounds]
    assert rounds and all(len(t.round_images_per_s) == len(t.rounds) for t in rounds)


def test_migration_keeps_every_number_and_is_rerunnable(tmp_path):
    src = sorted((RESULTS / "runs").rglob("*.json"))[:5] + sorted((RESULTS / "timing").rglob("*.json"))[:5]
    before = {}
    for p in src:
        dest = tmp_path / p.relative_to(RESULTS)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
        before[dest] = json.loads(p.read_text())
    migrate(tmp_path)
    after = {p: p.read_bytes() for p in before}
    assert migrate(tmp_path) == 0 and all(p.read_bytes() == b for p, b in after.items())
    for p, old in before.items():
        new = json.loads(after[p])
        new_numbers = _numbers(new)
        for k, v in _numbers(old).items():
            if k == ".schema_version":
                continue
            if k.startswith(".round_images_per_s"):  # derived from the rounds now, to the last bit
                i = int(k.split("[")[1].rstrip("]"))
                assert TimingRecord.from_dict(new).round_images_per_s[i] == v
                continue
            assert new_numbers[k.replace(".hardware.", ".env.", 1)] == v, (p, k)


def test_a_jobs_record_names_its_grid_axes_and_data_root(tmp_path):
    data = make_dataset(tmp_path / "d", n_train=4, n_test_good=1, n_test_defect=1, size=64)
    job = Grid.load("alpha").jobs(data=[str(data)], categories=["weave"], seeds=[0])[0]
    rec = job_record(job, "cpu")
    assert rec.grid == {"name": "alpha", "axes": {"alpha": 0.0}}
    assert (rec.data_root, rec.data_path) == ("external", data.name)
    again = RunRecord.from_dict(json.loads(json.dumps(rec.to_dict())))
    assert again == rec and Variant.from_record(again) == job.variant


def test_a_record_key_no_one_knows_is_kept():
    raw = {"status": "ok", "run_id": "r", "name": "x", "scope": "map", "batch_size": 1, "precision": "fp32",
           "schema_version": TIMING_SCHEMA, "future_field": [1, 2]}
    rec = TimingRecord.from_dict(raw)
    assert rec.extra == {"future_field": [1, 2]} and rec.to_dict()["future_field"] == [1, 2]


@pytest.mark.parametrize("old,root", [("/root/data/kolektorsdd", "shared"), ("/home/me/stuff/weave", "external")])
def test_old_absolute_data_paths_become_a_named_root(old, root):
    rec = RunRecord.from_dict({"status": "ok", "data_root": old})
    assert rec.data_root == root and rec.data_path == Path(old).name


def test_plain_cells_after_an_in_place_channels_last_cell_are_flagged_invalid():
    def raw(scope, bs, cl=False, precision="fp32", backend="eager", run="r", schema=3, mode="cast"):
        return {"status": "ok", "run_id": run, "name": "reduced", "scope": scope, "batch_size": bs, "backend": backend,
                "precision": precision, "channels_last": cl, "precision_mode": mode, "schema_version": schema}
    raws = [raw("network", 1), raw("network", 1, cl=True), raw("network", 8), raw("map", 1, backend="onnxruntime"),
            raw("map", 1), raw("map", 1, cl=True), raw("network", 8, run="fixed", schema=4),
            raw("network", 1, run="fixed", cl=True, schema=4),
            # a cast copy took the channels_last conversion: nothing leaked in this run
            raw("map", 1, run="fp16", precision="fp16"), raw("map", 1, run="fp16", precision="fp16", cl=True),
            raw("map", 8, run="fp16", precision="fp16")]
    status = [TimingRecord.from_dict(r).status for r in flag_leaked_channels_last(raws)]
    assert status == ["ok", "ok", "invalid", "ok", "invalid", "ok", "ok", "ok", "ok", "ok", "ok"]
    assert TimingRecord.from_dict(raws[2]).schema_version == TIMING_SCHEMA == 4
