"""The slurm executor against a real SLURM (tests/slurm/start-cluster.sh: one node, this machine).

Skips where no cluster answers; BENCH_REQUIRE_SLURM=1 (CI) makes that a failure. The grid is
submitted the way a user does it (`invoke ablate --executor slurm`) from a folder that is not the
checkout and without PYTHONPATH, so the tasks find the interpreter, the code and the results on
their own.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from bench.grids import Grid, parse_overrides
from bench.runner import run_grid
from bench.slurm import SlurmOptions
from bench.synthetic import make_dataset

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

ROOT = Path(__file__).resolve().parent.parent
TINY = "teacher_init=random,teacher2_init=random,image_size=64"
TEST_CLUSTER_CONF = Path(os.environ.get("BENCH_SLURM_DIR", "/tmp/bench-slurm")) / "slurm.conf"


def _no_cluster(reason: str):
    if os.environ.get("BENCH_REQUIRE_SLURM") == "1":
        pytest.fail(f"BENCH_REQUIRE_SLURM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster():
    """The environment a SLURM client needs: the cluster of SLURM_CONF, else the test cluster."""
    env = dict(os.environ)
    if "SLURM_CONF" not in env and TEST_CLUSTER_CONF.is_file():
        env["SLURM_CONF"] = str(TEST_CLUSTER_CONF)
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        _no_cluster("no SLURM client (sinfo, sbatch); apt-get install slurm-client, or see tests/slurm/")
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True, timeout=30)
    if out.returncode or not {"idle", "mix"} & set(out.stdout.split()):
        _no_cluster(f"no SLURM node is idle (start one: tests/slurm/start-cluster.sh); sinfo said: "
                    f"{(out.stdout + out.stderr).strip()!r}")
    config = subprocess.run(["scontrol", "show", "config"], env=env, capture_output=True, text=True).stdout
    loc = re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.M)
    filetxt = re.search(r"^JobCompType\s*=\s*jobcomp/filetxt", config, re.M)
    env.pop("PYTHONPATH", None)  # the tasks must find bench without the test's PYTHONPATH
    return {"env": env, "jobcomp": Path(loc.group(1)) if filetxt and loc else None}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_train=8, n_test_good=3, n_test_defect=3, size=64)


class QueueWatch:
    """squeue sampled twice a second: the most tasks of an array seen running at once, and why
    its pending tasks waited."""

    def __init__(self, env):
        self.env, self.running, self.reasons = env, {}, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.5):
            out = subprocess.run(["squeue", "-h", "-r", "-o", "%F %i %T %r"], env=self.env,
                                 capture_output=True, text=True).stdout
            now: dict[str, int] = {}
            for line in out.splitlines():
                array, _, state, reason = line.split(maxsplit=3)
                now[array] = now.get(array, 0) + (state == "RUNNING")
                if state == "PENDING":
                    self.reasons.add(reason)
            for array, n in now.items():
                self.running[array] = max(self.running.get(array, 0), n)

    def stop(self):
        self._stop.set()
        self._thread.join()


def _ablate(tiny, cluster, extra=()):
    """invoke ablate from the results' parent folder (not the checkout), PYTHONPATH unset."""
    return [sys.executable, "-m", "invoke", "--search-root", str(ROOT), "ablate", "--grid", "methods",
            "--data", str(tiny), "--categories", "weave", "--seeds", "0,1", "--epochs", "1", "--set", TINY,
            "--results", "res", "--executor", "slurm", "--max-parallel", "2", "--slurm-cpus", "1",
            "--slurm-time", "10", *extra]


def _array_id(stdout: str) -> str:
    return re.search(r"submitted \d+ jobs as array (\d+)", stdout).group(1)


def _completions(cluster, arrays) -> list[dict]:
    """The job-completion log's lines of these arrays, with start/end as datetimes. A task's line is
    written when it has left the node, which can be after the grid saw its result: wait for that."""
    if cluster["jobcomp"] is None:
        return []
    deadline = time.time() + 60
    while time.time() < deadline and subprocess.run(
            ["squeue", "-h", "-r", "-j", ",".join(arrays), "-t", "PENDING,RUNNING,COMPLETING", "-o", "%i"],
            env=cluster["env"], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    rows = []
    for line in cluster["jobcomp"].read_text().splitlines():
        f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
        if f.get("ArrayJobId") in arrays:
            f["start"], f["end"] = (_time(f.get(k)) for k in ("StartTime", "EndTime"))
            rows.append(f)
    return sorted(rows, key=lambda f: (f["start"], f["ArrayJobId"], int(f["ArrayTaskId"])))


def _time(text):
    try:
        return datetime.fromisoformat(text)
    except (TypeError, ValueError):  # "Unknown": a task cancelled before it started
        return None


def _most_at_once(rows) -> int:
    """Largest number of [start, end) intervals overlapping (a task ending in the second another
    starts does not overlap it; the log has whole seconds)."""
    ran = [r for r in rows if r["start"] and r["end"] and r["end"] > r["start"]]
    events = sorted([(r["start"], 1) for r in ran] + [(r["end"], -1) for r in ran])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def _print_tasks(title, rows):
    print(f"\n{title}")
    for r in rows:
        print(f"  {r['ArrayJobId']}_{r['ArrayTaskId']:<3} {r['JobState']:<10} {r['StartTime']} -> {r['EndTime']}"
              f"  ProcCnt={r['ProcCnt']}")


def _records(results: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((results / "runs").rglob("*.json"))}


def _print_records(title, records):
    import hashlib
    print(f"\n{title}")
    for p, b in records.items():
        r = json.loads(b)
        print(f"  {p.name:<48} {r['status']:<7} sha256 {hashlib.sha256(b).hexdigest()[:12]}"
              f"  {(r.get('slurm') or {}).get('state') or ''}")


def test_array_respects_the_cap_and_survives_scancel_then_rerun(tiny, cluster, tmp_path):
    results = tmp_path / "res"
    watch = QueueWatch(cluster["env"])
    proc = subprocess.Popen(_ablate(tiny, cluster), cwd=tmp_path, env=cluster["env"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_line = ""
    while "submitted" not in first_line and proc.poll() is None:
        first_line += proc.stdout.readline()
    array = _array_id(first_line)
    # scancel once the first tasks are recorded and later ones are training: both running and
    # pending tasks are then cut off.
    deadline, later_since = time.time() + 300, None
    while time.time() < deadline and (later_since is None or time.time() - later_since < 3):
        time.sleep(0.5)
        running = subprocess.run(["squeue", "-h", "-r", "-j", array, "-t", "RUNNING", "-o", "%K"],
                                 env=cluster["env"], capture_output=True, text=True).stdout.split()
        if later_since is None and any(int(k) >= 2 for k in running if k.isdigit()):
            later_since = time.time()
    subprocess.run(["scancel", array], env=cluster["env"], check=True)
    out1 = first_line + proc.communicate(timeout=120)[0]
    print(out1)
    before = _records(results)
    _print_records("records after scancel", before)
    recs = {p: json.loads(b) for p, b in before.items()}
    done = {p for p, r in recs.items() if r["status"] == "ok"}
    assert 2 <= len(done) < 6, f"the scancel must land mid-grid:\n{out1}"
    # Tasks scancel killed (running) or dropped (pending) are recorded as failed, with their state and
    # where their log is (or would have been).
    for r in (r for r in recs.values() if r["status"] != "ok"):
        assert r["slurm"]["state"] == "CANCELLED" and "CANCELLED" in r["error"], r
        assert Path(r["slurm"]["log"]).parent == results.resolve() / "slurm"

    out2 = subprocess.run(_ablate(tiny, cluster), cwd=tmp_path, env=cluster["env"], text=True,
                          capture_output=True, timeout=600)
    print(out2.stdout[-3000:], out2.stderr[-3000:])
    assert out2.returncode == 0
    assert f"6 jobs, {len(done)} already recorded, {6 - len(done)} to run" in out2.stdout
    watch.stop()
    after = _records(results)
    _print_records("records after the rerun", after)
    assert len(after) == 6 and all(json.loads(b)["status"] == "ok" for b in after.values())
    assert all(after[p] == before[p] for p in done)  # finished records untouched, byte for byte
    assert len({(r["variant_key"], r["seed"]) for r in map(json.loads, after.values())}) == 6  # no duplicate

    arrays = {array, _array_id(out2.stdout)}
    rows = _completions(cluster, arrays)
    _print_tasks(f"arrays {sorted(arrays)} (job-completion log)", rows)
    print(f"squeue: most running at once per array {watch.running}; pending reasons {watch.reasons}")
    assert max(watch.running.get(a, 0) for a in arrays) == 2
    if rows:
        assert _most_at_once(rows) == 2
        assert {r["JobState"] for r in rows if r["ArrayJobId"] == array} <= {"COMPLETED", "CANCELLED"}
        assert [r["JobState"] for r in rows if r["ArrayJobId"] != array] == ["COMPLETED"] * (6 - len(done))


def test_failing_task_is_recorded_with_its_log_and_the_cap_holds_below_the_node(tiny, cluster, tmp_path,
                                                                                monkeypatch):
    broken = tmp_path / "data"
    shutil.copytree(tiny, broken)
    (broken / "grain" / "train" / "good" / "000.png").write_bytes(b"garbage")
    jobs = [j for j in Grid.load("methods").jobs(data=[str(broken)], seeds=[0], epochs=1,
                              overrides=parse_overrides(TINY.split(","))) if j.variant_name == "reduced"]
    assert sorted(j.category for j in jobs) == ["grain", "weave"]
    if "SLURM_CONF" in cluster["env"]:
        monkeypatch.setenv("SLURM_CONF", cluster["env"]["SLURM_CONF"])
    outcomes = run_grid(jobs, results=tmp_path / "res", executor="slurm",
                        slurm=SlurmOptions(max_parallel=1, cpus_per_task=1, time_min=10))
    failed = [v for k, v in outcomes.items() if v != "ok"]
    assert len(failed) == 1 and "000.png: corrupt" in failed[0]
    recs = [json.loads(b) for b in _records(tmp_path / "res").values()]
    bad = [r for r in recs if r["status"] == "failed"]
    assert len(recs) == 2 and len(bad) == 1 and "000.png" in bad[0]["error"]
    log = Path(bad[0]["slurm"]["log"])
    assert log.is_file() and log.parent == (tmp_path / "res" / "slurm").resolve()
    array = bad[0]["slurm"]["job_id"].split("_")[0]
    rows = _completions(cluster, {array})
    _print_tasks(f"array {array}, --max-parallel 1 on a 2-core node", rows)
    if rows:
        assert len(rows) == 2 and _most_at_once(rows) == 1
