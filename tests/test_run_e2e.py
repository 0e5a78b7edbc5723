"""End to end on generated data: train -> evaluate -> record -> DataFrame."""
import json

import pytest

from bench.jobs import Job
from bench.run import run_job
from bench.store import records_frame
from bench.synthetic import make_dataset
from bench.variants import create_variant

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"), n_train=10, n_test_good=4, n_test_defect=6, size=96)


@pytest.mark.parametrize("name", ["reduced", "stpm", "mixed"])
def test_run_job_writes_a_complete_record(synth, tmp_path, name):
    v = create_variant(name, teacher_init="random", teacher2_init="random", image_size=96) if name == "mixed" \
        else create_variant(name, teacher_init="random", image_size=96)
    job = Job(name, v, str(synth), "weave", seed=0, recipe="quick", epochs=2)
    rec = run_job(job, tmp_path, progress=False)
    on_disk = json.loads(job.record_path(tmp_path).read_text())
    assert on_disk["status"] == "ok" and on_disk["method"] == name and on_disk["variant_key"] == v.key
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert 0.0 <= on_disk["metrics"][key] <= 1.0
    assert on_disk["train"]["best_epoch"] in (1, 2) and len(on_disk["train"]["val_loss"]) == 2
    assert on_disk["teachers"][0]["kind"] == "random" and on_disk["env"]["software"]["torch"]
    assert on_disk["examples"] and job.record_path(tmp_path).with_suffix(".npz").is_file()
    assert len(rec.test["scores"]) == 10
    df = records_frame(tmp_path / "runs")
    assert len(df) == 1 and "metrics.image_auroc" in df and "variant.alpha" in df


def test_eval_only_variant_reuses_the_trained_student(synth, tmp_path):
    v = create_variant("reduced", teacher_init="random", image_size=96)
    a = run_job(Job("r", v, str(synth), "grain", epochs=1), tmp_path, progress=False)
    b = run_job(Job("r", create_variant("reduced", teacher_init="random", image_size=96, score="max"),
                    str(synth), "grain", epochs=1), tmp_path, progress=False)
    assert (a.train["student"], b.train["student"]) == ("trained", "checkpoint") and b.train["reused_checkpoint"]
    assert a.metrics["pixel_auroc"] == b.metrics["pixel_auroc"]


def test_git_revision_can_be_told_by_the_sender(monkeypatch):
    from bench import env
    env.git_revision.cache_clear()
    monkeypatch.setenv("BENCH_GIT_REVISION", "0123abc")
    try:
        assert env.git_revision() == "0123abc"
    finally:
        env.git_revision.cache_clear()
