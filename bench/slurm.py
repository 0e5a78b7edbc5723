"""The SLURM path of a grid: the jobs to run as one array job through submitit.

What a real cluster needs beside the jobs (partition, account, time limit, CPUs and GPUs per task,
`setup` lines that activate the environment) comes in as SlurmOptions. Tested against a real
one-node slurmctld + slurmd in tests/test_slurm.py.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import torch

from bench.errors import GridError
from bench.jobs import Job
from bench.records import RunRecord, write
from bench.run import StudentGroup, job_record

# A source checkout (not an installed wheel): the tasks must import this very code.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
    partition: str | None = None
    account: str | None = None
    time_min: int = 240
    cpus_per_task: int | None = None  # None: the partition's default (one CPU on most clusters)
    gpus: int | None = None           # None: one GPU when the device is CUDA, none asked for otherwise
    setup: tuple[str, ...] = ()       # shell lines run before the task, e.g. "source venv/bin/activate"
    max_parallel: int = 8             # array concurrency cap (%N)
    folder: str | Path | None = None  # submitit logs; default <results>/slurm
    cluster: str | None = None        # submitit's: None (detect), "slurm", "local" (tests), "debug"


def run_array(jobs: list[Job], results: str, device: str, weights: dict | None, opts: SlurmOptions) -> dict:
    try:
        import submitit  # the `cluster` extra: only this executor needs it
    except ImportError as err:
        raise GridError("the slurm executor needs submitit: pip install 'bench[cluster]'") from err
    if not jobs:
        return {}
    results = str(Path(results).resolve())  # tasks may start elsewhere than here
    folder = Path(opts.folder or Path(results) / "slurm").resolve()
    ex = submitit.AutoExecutor(folder=str(folder), cluster=opts.cluster)  # tasks run sys.executable
    params = dict(timeout_min=int(opts.time_min), slurm_array_parallelism=int(opts.max_parallel))
    if opts.cluster in (None, "slurm"):
        gpus = opts.gpus if opts.gpus is not None else (1 if device.startswith("cuda") else None)
        slurm = dict(partition=opts.partition, account=opts.account, cpus_per_task=opts.cpus_per_task,
                     gpus_per_node=gpus or None, setup=[*_environment_lines(), *opts.setup])
        params.update({f"slurm_{k}": v for k, v in slurm.items() if v is not None})
    ex.update_parameters(**params)
    n = len(jobs)
    handles = ex.map_array(_task, jobs, [results] * n, [device] * n, [weights] * n)
    array_id = handles[0].job_id.split("_")[0]
    print(f"submitted {n} jobs as array {array_id} (at most {opts.max_parallel} at once); logs in {folder}",
          flush=True)
    return _wait(jobs, handles, results, device, array_id if opts.cluster in (None, "slurm") else None)


def _environment_lines() -> list[str]:
    """The task imports bench from the submitter's checkout, whatever the node's site-packages hold
    (an editable install can point at another copy)."""
    if not (SOURCE_ROOT / "pyproject.toml").is_file():
        return []
    return [f"export PYTHONPATH={SOURCE_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}"]


def _task(job: Job, results: str, device: str, weights: dict | None) -> str:
    """What one array task runs: the job (a group of one), plus the task's log files on a failed record."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:  # without cgroups torch sees every core of the node, and tasks sharing it oversubscribe
        torch.set_num_threads(int(cpus))
    outcome = StudentGroup([job], results, device, weights, progress=False).run()[job.describe()]
    if outcome != "ok":
        import submitit
        env = submitit.JobEnvironment()
        note_failure(job, results, device,
                     {"job_id": env.job_id, "log": str(env.paths.stdout), "stderr": str(env.paths.stderr)})
    return outcome


def note_failure(job: Job, results: str, device: str, slurm: dict, error: str | None = None) -> None:
    """Add the SLURM task and its logs to the failed record the task just wrote; with an error, the
    task itself could not record it (time limit, scancel, node failure): a failed record of its own,
    unless this very task recorded its failure before it was killed. An ok record is never touched."""
    path = job.record_path(results)
    try:
        record = RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        record = None
    if record is not None and (record.ok or (error and (record.slurm or {}).get("job_id") == slurm["job_id"])):
        return
    if record is None or error:  # an older attempt's failed record says nothing about this one
        record = dataclasses.replace(job_record(job, device, status="failed"), error=error or "no record written")
    record.slurm = slurm
    write(record, path)


# A task that left the queue may still be writing its result file, or the shared file system may
# show it late; only after this long without one is it taken as killed.
RESULT_GRACE_S = 10
POLL_S = 2


def _wait(jobs, handles, results, device, array_id) -> dict:
    """Outcomes as tasks finish. submitit learns that a task died from sacct, which needs slurmdbd
    (without it: a warning per poll, and a wait forever on a cancelled task); squeue, the
    controller's own view kept MinJobAge after a job ends, works on every cluster."""
    outcomes: dict[str, str] = {}
    left = dict(enumerate(handles))
    gone_since: dict[int, float] = {}
    start = time.time()
    while left:
        states = _queue_states(array_id) if array_id else None
        for i, handle in list(left.items()):
            job = jobs[i]
            if _finished(handle, on_slurm=array_id is not None):
                try:
                    outcome = handle.result()
                except Exception as err:  # noqa: BLE001 - the task raised outside run_one
                    outcome = f"failed: {type(err).__name__}: {str(err)[:2000]}"
                    note_failure(job, results, device, _slurm_note(handle, (states or {}).get(i)), outcome)
            elif states is not None and states.get(i) not in _ALIVE:
                if time.time() - gone_since.setdefault(i, time.time()) < RESULT_GRACE_S:
                    continue
                state = states.get(i, "gone from squeue")
                outcome = f"failed: SLURM task {handle.job_id} {state} without a result; log {handle.paths.stdout}"
                note_failure(job, results, device, _slurm_note(handle, state), outcome)
            else:
                gone_since.pop(i, None)  # alive again (requeued)
                continue
            del left[i]
            outcomes[job.describe()] = outcome
            k = len(outcomes)
            eta = (time.time() - start) / k * (len(jobs) - k)
            print(f"[{k}/{len(jobs)}] {job.describe()}: {outcome} (ETA {eta:.0f} s)", flush=True)
        if left:
            time.sleep(POLL_S)
    return {j.describe(): outcomes[j.describe()] for j in jobs}


def _finished(handle, on_slurm: bool) -> bool:
    if not on_slurm:  # submitit's local executor knows its processes
        return handle.done()
    folder = handle.paths.folder
    try:  # refresh a network file system's attribute cache, as submitit does
        folder.chmod(folder.stat().st_mode)
    except OSError:
        pass
    return handle.paths.result_pickle.exists()


_ALIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED",
          "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "PREEMPTED"}


def _slurm_note(handle, state) -> dict:
    return {"job_id": handle.job_id, "state": state, "log": str(handle.paths.stdout),
            "stderr": str(handle.paths.stderr)}


def _queue_states(array_id: str) -> dict[int, str] | None:
    """{array task index: state} for the tasks the controller still knows (pending ranges expanded)."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "--states=all", "-j", array_id, "-o", "%i %T"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None  # controller busy or unreachable: no task is taken as gone on this poll
    if proc.returncode:
        return {} if "Invalid job id" in proc.stderr else None  # the whole array aged out, or no answer
    out = proc.stdout
    states = {}
    for line in out.split("\n"):
        jid, _, state = line.strip().partition(" ")
        _, _, index = jid.partition("_")
        if index.isdigit():
            states[int(index)] = state
    return states

