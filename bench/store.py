"""Run records: one JSON file per run, written atomically; all of them as one DataFrame."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import pandas as pd

from bench.errors import UsageError


def check_results_folder(folder: str | Path, create: bool = True) -> Path:
    """FOLDER as a results folder we can write to (made if absent and CREATE), else UsageError: found
    before the first job, not as a traceback from its first record."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--results {folder}: is a file, not a folder")
    if not create:
        return folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UsageError(f"--results {folder}: cannot write there ({err.strerror or err})") from err
    return folder


def write_json_atomic(path: str | Path, obj: dict) -> Path:
    """Write to a temporary file beside PATH, fsync, then rename: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; records are meant to be shared
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class RecordWarning(UserWarning):
    """A file under a records folder that is no record: named and skipped, never counted."""


def read_records(folder: str | Path, require: tuple[str, ...] = ("status",)) -> list[dict]:
    """Every JSON record under FOLDER. A file that does not parse, or is not a record of ours (not an
    object, or without the REQUIRE keys), is reported by path and skipped: one broken file among
    hundreds must not stop a grid or a report."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.rglob("*.json")):
        try:
            rec = json.loads(p.read_text())
        except (ValueError, OSError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            warnings.warn(f"{p}: not a readable JSON record, skipped ({type(err).__name__}: {err})",
                          RecordWarning, stacklevel=2)
            continue
        lacking = [k for k in require if k not in rec] if isinstance(rec, dict) else list(require)
        if lacking:
            warnings.warn(f"{p}: not a run or timing record (no {', '.join(lacking)}), skipped",
                          RecordWarning, stacklevel=2)
            continue
        rec["_path"] = str(p)
        out.append(rec)
    return out


def records_frame(folder: str | Path) -> pd.DataFrame:
    """One row per record; nested dicts flattened with dots (metrics.image_auroc, variant.alpha, ...)."""
    recs = read_records(folder)
    if not recs:
        return pd.DataFrame()
    return pd.json_normalize(recs, max_level=1)
