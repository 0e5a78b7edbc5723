"""The two record shapes the suite writes, and the one place older shapes are read.

A *run record* (results/runs/<dataset>/<category>/<stem>.json) is one trained and evaluated job;
a *timing record* (results/timing/<run_id>_<device>/<subject>_<cell>.json) one subject timed in one
cell of a timing run. Both carry `schema_version`, one `env` block (hardware, software, git
revision), and no machine path: data is named by a root (a dataset entry of ablations/datasets.toml)
and a folder under it, weight files by name and sha256.

Readers accept every shape ever committed: `RunRecord.from_dict` / `TimingRecord.from_dict` upgrade
an older record in memory, step by step, so records written by older code (or by a branch not yet
merged) read the same as new ones; `migrate` rewrites a folder of them in the current shape. A key
this module does not know is kept in `extra` and written back unchanged.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data_entries import data_ref
from bench.store import read_records, write_json_atomic

RUN_SCHEMA = 2
TIMING_SCHEMA = 4
# Timing teachers are random-initialised: weights do not change speed.
TIMING_TEACHER_KIND = "random"


def _env(hardware: dict, software: dict, git_revision: str, **extra) -> dict:
    """The one environment block: the hardware's fields, then software versions and git revision."""
    return {**hardware, "software": software, "git_revision": git_revision, **extra}


def _weight_file(teacher: dict) -> dict:
    """A teacher's weight file by name (its sha256 says which file it is), never a machine path."""
    if teacher.get("file"):
        teacher = {**teacher, "file": Path(teacher["file"]).name}
    return teacher


@dataclass(kw_only=True)
class _Record:
    """What both shapes have: a status, the environment, an error when it failed; keys this module
    does not know (`extra`, written back as they came) and where it was read from (`path`)."""
    status: str
    env: dict = field(default_factory=dict)
    error: str | None = None
    extra: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def upgrade(cls, raw: dict) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, raw: dict, path: str | None = None):
        raw = cls.upgrade(raw)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "path"}
        known = {k: v for k, v in raw.items() if k in names}
        extra = {k: v for k, v in raw.items() if k not in names and k != "_path"}
        return cls(**known, extra=extra, path=path)

    def to_dict(self) -> dict:
        """As JSON wants it: the schema version first, then the fields in their order, then kept keys."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "path")}
        return {"schema_version": out.pop("schema_version"), **out, **self.extra}


@dataclass(kw_only=True)
class RunRecord(_Record):
    """One job: which variant on which data, what it scored, and where it ran. `status`: ok or failed."""
    schema_version: int = RUN_SCHEMA
    method: str | None = None
    variant_name: str | None = None      # the grid's label, e.g. "mixed alpha=0.5"
    variant_key: str | None = None
    train_key: str | None = None         # shared by variants that train the same student
    variant: dict = field(default_factory=dict)   # Variant fields (Variant.from_record reads them back)
    grid: dict | None = None             # {"name": grid file stem, "axes": {axis: value}}; None outside grids
    dataset: str | None = None
    category: str | None = None
    data_root: str | None = None         # a dataset entry's name (ablations/datasets.toml), or "external"
    data_path: str | None = None         # the dataset folder, relative to that root
    seed: int | None = None
    recipe: str | None = None
    recipe_fields: dict | None = None
    epochs: int | None = None
    metrics: dict | None = None
    metric_settings: dict | None = None
    train: dict | None = None            # the training summary; `student`: trained, checkpoint or sibling
    layout: str | None = None
    n_test: int | None = None
    n_test_defective: int | None = None
    teachers: list = field(default_factory=list)  # per branch: backbone, kind, file (name), sha256, label
    implementation: dict | None = None   # a peer's: the package, version and classes that ran (None: ours)
    test: dict | None = None             # per test image: labels, scores, defect
    examples: str | None = None          # the .npz of example maps beside the record (seed 0)
    map_path: str = "exact"              # the suite's Eq. 9-10 (every record before the lean path too); "anomalib": a peer's own map
    started: str | None = None
    wall_s: float | None = None
    traceback: str | None = None
    slurm: dict | None = None

    @property
    def recipe_label(self) -> str:
        return f"{self.recipe}/{self.epochs}ep"

    @property
    def device(self) -> str:
        return self.env.get("device", "")

    @classmethod
    def upgrade(cls, raw: dict) -> dict:
        return upgrade_run(raw)


def upgrade_run(raw: dict) -> dict:
    """Any run record as the current schema. 1 -> 2: `software`, `hardware` and `git_revision` into
    `env`; the absolute `data_root` into a named root and a folder; weight files by name."""
    rec = dict(raw)
    if rec.get("schema_version", 1) < 2:
        if "hardware" in rec or "software" in rec:
            rec["env"] = _env(rec.pop("hardware", {}), rec.pop("software", {}), rec.pop("git_revision", None))
        if "data_root" in rec:
            rec["data_root"], rec["data_path"] = data_ref(rec["data_root"])
        rec["teachers"] = [_weight_file(t) for t in rec.get("teachers") or []]
        rec["schema_version"] = 2
    return rec


@dataclass(kw_only=True)
class TimingRecord(_Record):
    """One subject timed in one cell (scope, batch, precision, options) of one timing run.
    `status`: ok, failed, oom, or invalid (a measurement found wrong later, its error says why)."""
    schema_version: int = TIMING_SCHEMA
    run_id: str
    name: str                            # the subject: a variant name, "teacher:...", or a peer's
    scope: str
    batch_size: int
    precision: str
    role: str = "detector"               # detector, teacher (a detector's floor) or peer
    origin: str = "ours"
    method: str | None = None
    variant_key: str | None = None
    variant: dict | None = None
    teachers: list = field(default_factory=list)  # per teacher: backbone, kind ("random" here)
    floor: str | None = None             # a detector's teacher-alone subject
    map_path: str | None = None
    backend: str = "eager"
    export_check: dict | None = None
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False
    image_size: int | None = None
    e2e_output: str | None = None
    rounds_asked: int | None = None
    warmup: int | None = None
    precision_mode: str | None = None
    rounds: list = field(default_factory=list)   # per round: median_ms, iters, cpu_s, ms
    median_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    images_per_s: float | None = None
    iters: int | None = None
    teacher_params_m: float | None = None
    student_params_m: float | None = None
    gmacs: float | None = None
    peak_device_mem_mb_cell: float | None = None
    peak_rss_mb: float | None = None
    gpu_activity: dict | None = None

    @property
    def arch_key(self) -> str | None:
        """The timed architecture (Variant.arch_key); None for a subject without a variant (a floor, anomalib's default STFPM)."""
        from bench.variants import Variant   # variants builds detectors; records stay importable without them
        return Variant.from_record(self).arch_key if self.variant else None

    @property
    def round_images_per_s(self) -> list[float]:
        """Throughput of each round (derived from the rounds, never stored)."""
        return [self.batch_size / (r["median_ms"] / 1e3) for r in self.rounds]

    @property
    def cell(self) -> tuple:
        return (self.run_id, self.scope, self.batch_size, self.precision, self.channels_last, self.compile,
                self.cuda_graphs)

    @classmethod
    def upgrade(cls, raw: dict) -> dict:
        return upgrade_timing(raw)


def timing_teachers(backbones) -> list[dict]:
    return [{"backbone": b, "kind": TIMING_TEACHER_KIND} for b in backbones if b]


def subject_backbones(variant: dict | None, name: str, origin: str | None) -> list[str]:
    """The teacher backbones of a timed subject: its variant's, a floor's (named
    "teacher:resnet18[..layer3]+efficientnet_b0[..blocks.6]"), or anomalib STFPM's ResNet-18."""
    if variant:
        return [variant.get("teacher"), variant.get("teacher2")]
    if name.startswith("teacher:"):
        return [part.split("[")[0] for part in name[len("teacher:"):].split("+")]
    return ["resnet18"] if origin == "anomalib" else []


def upgrade_timing(raw: dict) -> dict:
    """Any timing record as the current schema. 1 (no version: single pass, no rounds) and 2 -> 3:
    `teachers` a list like a run record's, not a sentence; the per-round throughput, derived from
    the rounds, no longer stored; the role of records that predate it. 3 -> 4 changes no field: the
    records a channels_last leak made wrong are found run by run (flag_leaked_channels_last)."""
    rec = dict(raw)
    if rec.get("schema_version", 1) < 3:
        rec.setdefault("role", "peer" if rec.get("origin") == "anomalib" else "detector")
        rec["teachers"] = timing_teachers(subject_backbones(rec.get("variant"), str(rec.get("name", "")), rec.get("origin")))
        rec.pop("round_images_per_s", None)
    rec["schema_version"] = TIMING_SCHEMA
    return rec


# Until schema 4, a channels_last cell converted the timed model in place (Module.to), so every
# later cell of its run timed channels_last weights under a plain label. The cells ran in plan order
# (scope as SCOPES lists them, batch size, precision, then the options); the cells that converted
# the shared model are the channels_last ones without a cast copy (fp32, or autocast mode).
LEAKED_CHANNELS_LAST = ("invalid: timed after a channels_last cell of its run had converted the model in place "
                        "(a harness bug fixed with timing schema 4); not the plain-format measurement it is labelled")
_CELL_ORDER = {"scope": ("network", "map", "end_to_end"), "precision": ("fp32", "fp16", "bf16")}


def _cell_order(raw: dict) -> tuple:
    def index(field):
        order = _CELL_ORDER[field]
        return order.index(raw[field]) if raw.get(field) in order else len(order)
    return (index("scope"), raw.get("batch_size", 0), index("precision"), bool(raw.get("channels_last")),
            bool(raw.get("compile")), bool(raw.get("cuda_graphs")))


def flag_leaked_channels_last(raws: list[dict]) -> list[dict]:
    """RAWS (timing records as read) with every record of schema < 4 that a channels_last leak made
    wrong set to status `invalid` (named in its error): kept and readable, entering no table."""
    old = [r for r in raws if r.get("schema_version", 1) < 4 and r.get("backend", "eager") == "eager"]
    first_leak: dict[str, tuple] = {}
    for r in old:
        if r.get("channels_last") and (r.get("precision") == "fp32" or r.get("precision_mode") == "autocast"):
            first_leak[r["run_id"]] = min(_cell_order(r), first_leak.get(r["run_id"], _cell_order(r)))
    leaked = {id(r) for r in old if r["run_id"] in first_leak and not r.get("channels_last")
              and r.get("status") == "ok" and _cell_order(r) > first_leak[r["run_id"]]}
    return [{**r, "status": "invalid", "error": LEAKED_CHANNELS_LAST} if id(r) in leaked else r for r in raws]


def read_runs(folder: str | Path) -> list[RunRecord]:
    return [RunRecord.from_dict(r, r["_path"]) for r in read_records(folder)]


def read_timing(folder: str | Path) -> list[TimingRecord]:
    return [TimingRecord.from_dict(r, r["_path"]) for r in flag_leaked_channels_last(read_records(folder))]


def write(record: RunRecord | TimingRecord, path: str | Path) -> Path:
    return write_json_atomic(path, record.to_dict())


def migrate(results: str | Path) -> int:
    """Rewrite every record under RESULTS/runs and RESULTS/timing in the current schema; returns how
    many changed. Re-runnable: a record already current is left as it is, byte for byte."""
    changed = 0
    for sub, cls in (("runs", RunRecord), ("timing", TimingRecord)):
        raws = read_records(Path(results) / sub)
        for raw in flag_leaked_channels_last(raws) if cls is TimingRecord else raws:
            path = raw.pop("_path")
            new = cls.from_dict(raw).to_dict()
            if json.dumps(new, sort_keys=True, default=str) != json.dumps(raw, sort_keys=True, default=str):
                write_json_atomic(path, new)
                changed += 1
    return changed


def jsonable(value: Any) -> Any:
    """VALUE as it comes back from JSON: tuples (layers=(1, 2)) as lists, so a record in memory
    equals the record read back."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
