"""Run records: one JSON file per run, written atomically; all of them as one DataFrame."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd


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


def read_records(folder: str | Path) -> list[dict]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for p in sorted(folder.rglob("*.json")):
        rec = json.loads(p.read_text())
        rec["_path"] = str(p)
        out.append(rec)
    return out


def records_frame(folder: str | Path) -> pd.DataFrame:
    """One row per record; nested dicts flattened with dots (metrics.image_auroc, variant.alpha, ...)."""
    recs = read_records(folder)
    if not recs:
        return pd.DataFrame()
    return pd.json_normalize(recs, max_level=1)
