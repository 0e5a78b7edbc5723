"""Named dataset entries (ablations/datasets.toml, shared by every grid): what `--data NAME`
means, where the public datasets come from, and how a record names its data without a machine path.

An entry is a *named data root*: each machine says where its folders are (`paths`), and a record
keeps the entry's name and the dataset folder's name under it (`data_root`, `data_path`), so a
record made on one machine points at the same data on another.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from bench.data import DataError, detect_layout
from bench.errors import GridError
from bench.synthetic import make_dataset

ABLATIONS = Path(__file__).resolve().parent.parent / "ablations"
SHARED_DATASETS = ABLATIONS / "datasets.toml"
# a folder given by path (--data PATH), not through an entry
EXTERNAL = "external"


def read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise GridError(f"{path}: not valid TOML ({err})") from err


def shared_entries() -> dict:
    return read_toml(SHARED_DATASETS).get("datasets", {}) if SHARED_DATASETS.is_file() else {}


def entry_names(entries: dict) -> list[str]:
    return [k for k, v in entries.items() if isinstance(v, dict)]


@dataclass(frozen=True)
class DataChoice:
    """One dataset folder a grid runs on: its categories, the entry it came from, and the variant
    fields the entry sets (the demo's teachers and score)."""
    path: str
    categories: tuple[str, ...]
    entry: str | None = None
    defaults: dict = field(default_factory=dict, hash=False)


def _generate(name: str, entry: dict) -> None:
    kind = entry.get("generate")
    if kind != "synthetic":
        raise GridError(f"dataset entry {name!r}: unknown generator {kind!r} (known: synthetic)")
    for path in entry.get("paths", []):
        make_dataset(path)


def _missing(entries: dict, path: str, name: str | None, is_default: bool) -> str:
    """What is missing, where the public datasets come from, and how to point at data (or generate it)."""
    if name is None:
        what = f"--data {path}: no such folder, and not a dataset entry"
    else:
        default = " (the grid's default)" if is_default else ""
        what = f"dataset entry {name!r}{default} is not on this machine: {path} does not exist"
    sources = "; ".join(e["source"] for e in entries.values() if isinstance(e, dict) and "http" in e.get("source", ""))
    return (f"{what}.\n"
            f"  The suite downloads no dataset: get {sources}, and unpack it there.\n"
            f"  Then --data PATH (a folder in the MVTec AD / BTAD layout, or your own) or --data NAME "
            f"({', '.join(entry_names(entries))}); --data demo runs the grid now on generated data.")


def choose(entries: dict, data: list[str] | None, categories: list[str] | None, grid: str) -> list[DataChoice]:
    """The dataset folders DATA names (entries or paths; the default entry when None), every folder
    and category checked; an entry that generates its data generates it here."""
    chosen = data or [entries.get("default", "")]
    out = []
    for item in chosen:
        entry = entries.get(item) if item != "default" else None
        if isinstance(entry, dict):
            if entry.get("generate"):
                _generate(item, entry)
            out += [(p, categories or entry.get("categories"), item, entry.get("variant", {}))
                    for p in entry.get("paths", [])]
        elif item:
            out.append((item, categories, None, {}))
        else:
            raise GridError(f"grid {grid!r} names no default dataset: pass --data PATH or one of "
                            f"{entry_names(entries)}")
    resolved = []
    for path, cats, name, defaults in out:
        if not Path(path).exists():
            raise DataError(_missing(entries, path, name, is_default=not data))
        _, found = detect_layout(Path(path))
        unknown = [c for c in cats or [] if c not in found]
        if unknown:
            raise DataError(f"unknown categories {unknown} in {path}: available are {found}")
        resolved.append(DataChoice(str(path), tuple(cats or found), name, defaults))
    return resolved


def default_results(entries: dict, data: list[str] | None) -> str:
    """Where records go when --results is not given: "results", unless every chosen dataset entry
    names its own folder (the generated demo data keeps its records out of the committed ones)."""
    chosen = [entries.get(d) for d in data or [entries.get("default", "")]]
    folders = {e.get("results") if isinstance(e, dict) else None for e in chosen}
    return folders.pop() if len(folders) == 1 and None not in folders else "results"


def data_ref(path: str | Path, entry: str | None = None) -> tuple[str, str]:
    """(root, folder) naming dataset folder PATH: the entry it came from, or the shared entry one of
    whose paths is a folder of that name (records made before roots were named), else `external`."""
    name = Path(path).name
    if entry is None:
        entry = next((k for k, e in shared_entries().items() if isinstance(e, dict)
                      and any(Path(p).name == name for p in e.get("paths", []))), EXTERNAL)
    return entry, name


def data_folder(root: str, folder: str) -> Path:
    """Where the dataset folder a record names is on this machine."""
    entry = shared_entries().get(root)
    if isinstance(entry, dict):
        for p in entry.get("paths", []):
            if Path(p).name == folder:
                return Path(p)
    raise DataError(f"no dataset entry {root!r} with a folder {folder!r} in {SHARED_DATASETS}; "
                    "give the folder with --data PATH")
