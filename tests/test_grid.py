import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import GridError
from bench.grids import Grid, list_grids, parse_overrides
from bench.runner import run_grid
from bench.slurm import SlurmOptions
from bench.synthetic import make_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY = "teacher_init=random,teacher2_init=random,image_size=64"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_train=8, n_test_good=3, n_test_defect=3, size=64)


def test_every_shipped_grid_expands(tiny):
    names = [n for n, _ in list_grids()]
    assert {"layers", "pooling", "teachers", "alpha", "methods", "recipes", "readings"} <= set(names)
    for name in names:
        spec = Grid.load(name)
        assert set(spec.datasets) >= {"default", "mvtec_textures", "btad", "shared"}
        jobs = spec.jobs(data=[str(tiny)])
        assert jobs and len({j.record_path("r") for j in jobs}) == len(jobs)  # no two jobs share a record


def test_axes_cover_the_paper(tiny):
    alphas = {j.variant.alpha for j in Grid.load("alpha").jobs(data=[str(tiny)])}
    assert {0.0, 0.01, 0.1, 0.5, 1.0} <= alphas
    layers = {j.variant.layers for j in Grid.load("layers").jobs(data=[str(tiny)])}
    assert {(1, 2), (2, 3), (0, 1, 2, 3)} <= layers
    readings = Grid.load("readings").jobs(data=[str(tiny)], categories=["weave"], seeds=[0])
    assert len(readings) == 16 and len({j.variant.train_key for j in readings}) == 2
    recipes = {j.recipe for j in Grid.load("recipes").jobs(data=[str(tiny)])}
    assert recipes == {"paper", "official", "quick"}


def test_overrides_and_errors(tiny):
    jobs = Grid.load("methods").jobs(data=[str(tiny)], overrides=parse_overrides(["teacher=tf_efficientnet_lite0"]))
    assert {j.variant.teacher for j in jobs} == {"tf_efficientnet_lite0"}
    with pytest.raises(GridError, match="unknown variant fields"):
        Grid.load("methods").jobs(data=[str(tiny)], overrides={"colour": 1})
    with pytest.raises(GridError, match="no grid 'nope'"):
        Grid.load("nope")


def _ablate(results, tiny, extra=()):
    return [sys.executable, "-m", "invoke", "ablate", "--grid", "methods", "--data", str(tiny),
            "--seeds", "0,1", "--epochs", "2", "--set", TINY, "--results", str(results), *extra]


def test_dry_run_lists_jobs(tiny, tmp_path):
    out = subprocess.run(_ablate(tmp_path, tiny, ["--dry-run"]), cwd=ROOT, capture_output=True, text=True, check=True)
    assert "12 jobs, 0 already recorded, 12 to run" in out.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_sigkill_mid_grid_then_rerun_completes_without_loss_or_duplicates(tiny, tmp_path):
    proc = subprocess.Popen(_ablate(tmp_path, tiny), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list((tmp_path / "runs").rglob("*.json"))) < 3:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*.json")}
    assert 3 <= len(before) < 12, "the kill must land mid-grid"
    out = subprocess.run(_ablate(tmp_path, tiny), cwd=ROOT, capture_output=True, text=True, check=True)
    assert f"{len(before)} already recorded, {12 - len(before)} to run" in out.stdout
    after = list((tmp_path / "runs").rglob("*.json"))
    assert len(after) == 12 and not list(tmp_path.rglob("*.tmp*"))
    assert all(p.read_bytes() == data for p, data in before.items())  # finished records untouched
    assert all(json.loads(p.read_text())["status"] == "ok" for p in after)


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_grid_goes_on(tiny, tmp_path):
    broken = tmp_path / "data"
    import shutil
    shutil.copytree(tiny, broken)
    (broken / "grain" / "train" / "good" / "000.png").write_bytes(b"garbage")
    jobs = Grid.load("methods").jobs(data=[str(broken)], seeds=[0], epochs=1, overrides=parse_overrides(TINY.split(",")))
    outcomes = run_grid(jobs, results=tmp_path / "res")
    failed = {k: v for k, v in outcomes.items() if v != "ok"}
    assert len(failed) == 3 and all("grain" in k and "000.png: corrupt" in v for k, v in failed.items())
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "runs").rglob("*.json")]
    assert sorted(r["status"] for r in recs) == ["failed"] * 3 + ["ok"] * 3
    assert all("000.png" in r["error"] for r in recs if r["status"] == "failed")


def test_student_groups_keep_jobs_that_share_a_student_together(tiny):
    from bench.jobs import student_groups
    jobs = Grid.load("readings").jobs(data=[str(tiny)], categories=["weave"], seeds=[0, 1])
    groups = student_groups(jobs)
    assert len(groups) == 4  # student2 conv/copy x 2 seeds; score, fusion, map_weighting are evaluation-only
    assert all(len(g) == 8 and len({j.variant.train_key for j in g}) == 1 for g in groups)
    assert sorted(j.describe() for g in groups for j in g) == sorted(j.describe() for j in jobs)


@pytest.mark.slow
def test_several_workers_per_device_train_each_student_once(tiny, tmp_path):
    jobs = Grid.load("readings").jobs(data=[str(tiny)], categories=["weave"], seeds=[0], epochs=1,
                  overrides=parse_overrides(TINY.split(",")))
    outcomes = run_grid(jobs, results=tmp_path / "res", jobs_per_device=2)
    assert list(outcomes.values()) == ["ok"] * 16  # readings: 16 variants, 2 students
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "runs").rglob("*.json")]
    assert len(recs) == 16
    assert sorted(r["train"]["student"] for r in recs) == ["sibling"] * 14 + ["trained"] * 2  # one training per student
    assert not any(r["train"]["reused_checkpoint"] for r in recs)  # none was read from disk
    assert len(list((tmp_path / "res" / "checkpoints").rglob("*.pt"))) == 2


@pytest.mark.slow
def test_submitit_executor_runs_array_jobs(tiny, tmp_path):
    pytest.importorskip("submitit")
    jobs = Grid.load("methods").jobs(data=[str(tiny)], categories=["weave"], seeds=[0], epochs=1,
                  overrides=parse_overrides(TINY.split(",")))
    outcomes = run_grid(jobs, results=tmp_path / "res", executor="slurm",
                        slurm=SlurmOptions(cluster="local", folder=tmp_path / "logs", max_parallel=2))
    assert list(outcomes.values()) == ["ok"] * 3
    assert len(list((tmp_path / "res" / "runs").rglob("*.json"))) == 3
    assert list((tmp_path / "logs").glob("*_log.out"))


def test_records_are_written_readable_by_others(tmp_path):
    from bench.store import write_json_atomic
    p = write_json_atomic(tmp_path / "a" / "r.json", {"x": 1})
    assert p.stat().st_mode & 0o644 == 0o644 and not list(tmp_path.rglob("*.tmp"))


def test_a_corrupt_record_beside_the_grid_is_named_and_skipped(tiny, tmp_path, capsys):
    from bench.report import print_jobs_summary, write_summary
    from bench.store import RecordWarning, read_records
    res = tmp_path / "res"
    other = res / "runs" / "elsewhere" / "x"
    other.mkdir(parents=True)
    (other / "broken.json").write_text('{"status": "ok", "metr')      # a writer killed without our atomic rename
    (other / "foreign.json").write_text("[1, 2, 3]")                  # someone else's JSON
    (other / "notes.json").write_text('{"hello": "world"}')
    jobs = Grid.load("layers").jobs(data=[str(tiny)], categories=["weave"], seeds=[0], epochs=1,
                  overrides=parse_overrides(TINY.split(",")))[:1]
    with pytest.warns(RecordWarning) as caught:
        outcomes = run_grid(jobs, results=res)
        print_jobs_summary(jobs, res)
    assert list(outcomes.values()) == ["ok"]
    warned = " ".join(str(w.message) for w in caught)
    assert all(f"{other / name}" in warned for name in ("broken.json", "foreign.json", "notes.json"))
    out = capsys.readouterr().out
    assert "1 jobs, 0 already recorded, 1 to run" in out and "reduced layers=1+2" in out  # the summary table
    with pytest.warns(RecordWarning):
        assert [r["status"] for r in read_records(res / "runs")] == ["ok"]  # never counted
    with pytest.warns(RecordWarning):
        assert "reduced" in write_summary(res).read_text()  # what `invoke tables` writes, from the same records
