"""Every bad input a newcomer is likely to type gets one clear message and a non-zero exit, never a
traceback. The commands run in-process through invoke's own parser (one import of torch for all)."""
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from invoke import Collection, Program

from bench.synthetic import make_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY_SET = "teacher_init=random,image_size=64"


def _tasks():
    spec = importlib.util.spec_from_file_location("bench_tasks", ROOT / "tasks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PROGRAM = Program(namespace=Collection.from_module(_tasks()), name="invoke", binary="invoke")


def cli(argv: list[str], capsys) -> tuple[int, str]:
    """(exit code, stdout + stderr) of `invoke ARGV`."""
    try:
        PROGRAM.run(["invoke", *argv])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out + err


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files the bad inputs point at: a tiny dataset, a file where a folder belongs, broken grids..."""
    base = tmp_path_factory.mktemp("cli")
    tiny = make_dataset(base / "tiny", n_train=6, n_test_good=2, n_test_defect=3, size=64)
    (base / "a_file").write_text("not a folder")
    (base / "garbage.pth").write_text("this is not a weight file")
    (base / "broken.toml").write_text("variants = [reduced\n")
    (base / "typo.toml").write_text('variants = ["reduced"]\naxis = { layers = [[1, 2]] }\n')
    runs = base / "res" / "runs" / "synthetic" / "weave"
    runs.mkdir(parents=True)
    (runs / "r.json").write_text(json.dumps({"status": "ok", "dataset": "synthetic", "variant_key": "x"}))
    return {"tiny": str(tiny), "base": base}


GRID = ["ablate", "--grid", "layers", "--data", "{tiny}", "--categories", "weave", "--seeds", "0"]
DRY = [*GRID, "--dry-run"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")

# (argv, what the message must name, exit code). {tiny} and {base} are filled in from `world`.
CASES = [
    # the grid's default dataset is absent: where to get it, how to point at data, the demo entry
    (["ablate", "--grid", "layers", "--dry-run"], r"mvtec_textures.*data/mvtec_anomaly_detection does not exist(?s:.*)"
     r"https://www\.mvtec\.com/company/research/datasets/mvtec-ad(?s:.*)btad\.zip(?s:.*)--data demo", 2),
    (["ablate", "--grid", "layers"], r"data/mvtec_anomaly_detection does not exist", 2),
    (["ablate", "--grid", "layers", "--data", "btad", "--dry-run"], r"'btad' is not on this machine", 2),
    (["ablate", "--grid", "layers", "--data", "/nowhere/at/all", "--dry-run"], r"--data /nowhere/at/all: no such folder", 2),
    (["ablate", "--grid", "layers", "--data", "dmeo", "--dry-run"], r"--data dmeo: no such folder, and not a dataset entry", 2),
    ([*DRY[:5], "--categories", "nope", "--dry-run"], r"unknown categories \['nope'\]", 2),
    # grids
    (["ablate", "--grid", "nope"], r"no grid 'nope': known grids are \[.*'layers'", 2),
    (["ablate", "--grid", "{base}/broken.toml"], r"broken\.toml: not valid TOML", 2),
    (["ablate", "--grid", "{base}/typo.toml", "--data", "{tiny}"], r"typo\.toml: unknown keys \['axis'\]", 2),
    (["ablate", "--grid", "datasets"], r"no grid 'datasets'", 2),
    # variant fields, by --set
    ([*DRY, "--set", "colour=1"], r"unknown variant fields \['colour'\]", 2),
    ([*DRY, "--set", "alpha=abc"], r"alpha expects a number, not 'abc'", 2),
    ([*DRY, "--set", "layers=abc"], r"layers item expects a number, not 'abc'", 2),
    ([*DRY, "--set", "pooling=maybe"], r"pooling expects true or false, not 'maybe'", 2),
    ([*DRY, "--set", "alpha=-1"], r"alpha -1 is negative", 2),
    ([*DRY, "--set", "blur_sigma=-1"], r"blur_sigma -1 is negative", 2),
    ([*DRY, "--set", "image_size=0"], r"image_size 0 must be a positive multiple of 32", 2),
    ([*DRY, "--set", "image_size=100"], r"image_size 100 must be a positive multiple of 32", 2),
    ([*DRY, "--set", "teacher=nonexistent"], r"teacher 'nonexistent' is not a timm model name", 2),
    ([*DRY, "--set", "layers=[7]"], r"layers \[7\] out of range: layers are 0..4", 2),
    ([*DRY, "--set", "score=mean"], r"score 'mean' not in", 2),
    ([*DRY, "--set", "teacher2=efficientnet_b0"], r"only it takes a second teacher", 2),
    ([*DRY, "--set", "nonsense"], r"--set expects FIELD=VALUE, got 'nonsense'", 2),
    # run options
    ([*DRY[:8], "abc", "--dry-run"], r"--seeds expects comma-separated whole numbers, got 'abc'", 2),
    ([*DRY[:8], "-1", "--dry-run"], r"--seeds must be >= 0, got -1", 2),
    ([*DRY, "--epochs", "abc"], r"--epochs expects a whole number, got 'abc'", 2),
    ([*DRY, "--epochs", "0"], r"--epochs must be >= 1, got 0", 2),
    ([*DRY, "--epochs", "-3"], r"--epochs must be >= 1, got -3", 2),
    ([*DRY, "--recipe", "nope"], r"unknown recipe 'nope'; choose one of", 2),
    ([*GRID, "--executor", "nope"], r"unknown executor 'nope': use local or slurm", 2),
    pytest.param([*GRID, "--device", "cuda"], r"--device cuda asked for, but torch sees no CUDA device", 2, marks=NO_CUDA),
    ([*GRID, "--device", "nonsense"], r"--device 'nonsense' is not a device", 2),
    ([*GRID, "--jobs-per-device", "0"], r"--jobs-per-device must be >= 1, got 0", 2),
    ([*GRID, "--jobs-per-device", "abc"], r"--jobs-per-device expects a whole number, got 'abc'", 2),
    ([*GRID, "--max-parallel", "0"], r"--max-parallel must be >= 1, got 0", 2),
    ([*GRID, "--results", "{base}/a_file"], r"--results .*a_file: is a file, not a folder", 2),
    pytest.param([*GRID, "--results", "/sys/bench-results"], r"--results /sys/bench-results: cannot write there", 2,
                 marks=pytest.mark.skipif(not Path("/sys").is_dir() or os.access("/sys", os.W_OK) and os.getuid() != 0,
                                          reason="needs a folder this user cannot write")),
    # weights
    ([*GRID, "--weights", "resnet18"], r"--weights expects BACKBONE=PATH, got 'resnet18'", 2),
    ([*GRID, "--weights", "resnt18={base}/garbage.pth"], r"'resnt18' is not a timm model name", 2),
    ([*GRID, "--weights", "resnet18=/nowhere.pth"], r"file /nowhere\.pth does not exist", 2),
    ([*GRID, "--set", TINY_SET, "--weights", "efficientnet_b0={base}/garbage.pth"],
     r"--weights names backbones \['efficientnet_b0'\] that no pretrained teacher of these jobs uses; they use none", 2),
    # a garbage weight file: every job fails (named file, recorded), the command exits 1
    ([*GRID, "--set", "image_size=64,teacher=tf_efficientnet_lite0", "--epochs", "1", "--results", "{base}/res-w",
      "--weights", "tf_efficientnet_lite0={base}/garbage.pth"],
     r"garbage\.pth for backbone 'tf_efficientnet_lite0' is not a weight file torch can read(?s:.*)3 of 3 job\(s\) failed", 1),
    # demo
    (["demo", "--epochs", "0"], r"--epochs must be >= 1, got 0", 2),
    (["demo", "--epochs", "abc"], r"--epochs expects a whole number, got 'abc'", 2),
    (["demo", "--weights", "resnet18={base}/garbage.pth"], r"backbones \['resnet18'\] that the demo does not use", 2),
    (["demo", "--results", "{base}/a_file"], r"is a file, not a folder", 2),
    # timing
    (["timing", "--scopes", "bogus"], r"unknown scopes \['bogus'\]; choose from", 2),
    (["timing", "--batch-sizes", "0"], r"--batch-sizes must be >= 1, got 0", 2),
    (["timing", "--batch-sizes", "-1"], r"--batch-sizes must be >= 1, got -1", 2),
    (["timing", "--batch-sizes", "abc"], r"--batch-sizes expects comma-separated whole numbers", 2),
    (["timing", "--precisions", "fp8"], r"unknown precisions \['fp8'\]", 2),
    (["timing", "--iters", "0"], r"--iters must be >= 1, got 0", 2),
    (["timing", "--iters", "-1"], r"--iters must be >= 1, got -1", 2),
    (["timing", "--warmup", "-1"], r"--warmup must be >= 0, got -1", 2),
    pytest.param(["timing", "--device", "cuda"], r"no CUDA device", 2, marks=NO_CUDA),
    (["timing", "--device", "nonsense"], r"--device 'nonsense' is not a device", 2),
    (["timing", "--variants", "nope"], r"unknown variants \['nope'\]; registered:", 2),
    (["timing", "--set", "alpha=-1"], r"alpha -1 is negative", 2),
    (["timing", "--grid", "nope"], r"no grid 'nope'", 2),
    (["timing", "--results", "{base}/a_file"], r"is a file, not a folder", 2),
    # tables, variants
    (["tables", "--results", "does_not_exist"], r"--results does_not_exist does not exist", 2),
    (["tables", "--results", "{base}/a_file"], r"is a file, not a folder", 2),
    (["tables", "--results", "{base}/res", "--datasets", "nope"], r"--datasets \['nope'\]: no run records of those datasets", 2),
    (["variants", "--pattern", "zzz*"], r"no registered variant matches 'zzz\*'", 2),
    # invoke's own parser
    (["ablate", "--bogus"], r"No idea what '--bogus' is", 1),
    (["nosuchtask"], r"No idea what 'nosuchtask' is", 1),
]


def _ids():
    out = []
    for case in CASES:
        argv = case.values[0] if hasattr(case, "values") else case[0]
        out.append(" ".join(a for a in argv if "{" not in a)[:70])
    return out


@pytest.mark.parametrize("argv, message, code", CASES, ids=_ids())
def test_bad_input_gets_one_clear_message(argv, message, code, world, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative defaults (data/, results/) resolve in an empty folder
    monkeypatch.delenv("BENCH_DEBUG", raising=False)
    argv = [a.format(**world) for a in argv]
    got, text = cli(argv, capsys)
    assert got == code, text
    import re
    assert re.search(message, text), text
    assert "Traceback" not in text


def test_bench_debug_shows_the_traceback(world, capsys, monkeypatch, tmp_path):
    from bench.errors import GridError
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_DEBUG", "1")
    with pytest.raises(GridError, match="no grid 'nope'"):
        PROGRAM.run(["invoke", "ablate", "--grid", "nope"])


def test_a_failed_timing_case_is_recorded_at_once_and_the_command_exits_1(capsys, monkeypatch, tmp_path):
    from bench import timing, timing_measure
    written = []
    real_write = timing._write

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    def spy(out_dir, rec):
        written.append(rec.status)
        real_write(out_dir, rec)
    monkeypatch.setattr(timing_measure, "_prepare", boom)
    monkeypatch.setattr(timing, "_write", spy)
    code, text = cli(["timing", "--variants", "reduced", "--batch-sizes", "1", "--scopes", "network", "--iters", "1",
                      "--warmup", "0", "--rounds", "2", "--no-peers", "--results", str(tmp_path)], capsys)
    # two subjects: the reduced student and its teacher alone (the floor)
    assert code == 1 and "2 of 2 timing case(s) failed" in text and "boom" in text and "Traceback" not in text
    assert written == ["failed", "failed"] and len(list((tmp_path / "timing").rglob("*.json"))) == 2


def test_timing_dash_h_is_help(capsys):
    code, text = cli(["timing", "-h"], capsys)
    assert code == 0 and "--channels-last" in text and "Usage" in text


def test_set_pooling_no_means_false(world, capsys, monkeypatch, tmp_path):
    from bench.grids import Grid, parse_overrides, split_items
    jobs = Grid.load("layers").jobs(data=[world["tiny"]], overrides=parse_overrides(split_items("pooling=no,layers=[1,2]")))
    assert {j.variant.pooling for j in jobs} == {False} and {j.variant.layers for j in jobs} == {(1, 2)}
