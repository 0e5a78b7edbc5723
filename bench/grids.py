"""A grid file (`ablations/<name>.toml`) as a typed object, and its expansion into jobs.

    description = "..."
    variants = ["reduced"]                 # registered presets to start from
    recipe = "quick"
    seeds = [0, 1, 2]
    [axes]                                 # Variant fields (or "recipe"), crossed with each other
    layers = [[1, 2], [2, 3]]

Datasets come from the shared `ablations/datasets.toml` (bench.data_entries); a grid file may add
or override entries with a `[datasets]` table of its own. Every job, and so every record, carries
the grid's name and the job's axis values; `bench.report.ablation_table(runs, grid=NAME)` builds the
grid's table from this same file, so a new grid file needs no code to be run or shown.
"""
from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench import data_entries
from bench.data_entries import ABLATIONS, SHARED_DATASETS, read_toml
from bench.errors import GridError
from bench.jobs import Job
from bench.train import get_recipe
from bench.variants import PRESETS, Variant, create_variant

GRID_KEYS = ("description", "variants", "recipe", "seeds", "axes", "datasets")
RECIPE_AXIS = "recipe"     # the one axis that is not a Variant field


@dataclass(frozen=True)
class GridVariant:
    label: str                 # "mixed alpha=0.5": the base preset and what the axes set
    variant: Variant
    base: str
    axes: tuple[tuple[str, object], ...]


@dataclass(frozen=True)
class Grid:
    name: str
    path: Path
    description: str = ""
    bases: tuple[str, ...] = ("reduced",)      # the file's `variants`: presets the axes start from
    recipe: str = "quick"
    seeds: tuple[int, ...] = (0,)
    axes: dict = dataclasses.field(default_factory=dict)   # axis -> values, in the file's order
    datasets: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str | Path) -> Grid:
        path = Path(name_or_path)
        if not path.is_file():
            path = ABLATIONS / f"{name_or_path}.toml"
        if not path.is_file() or path.resolve() == SHARED_DATASETS.resolve():
            raise GridError(f"no grid {str(name_or_path)!r}: known grids are {[n for n, _ in list_grids()]}")
        spec = read_toml(path)
        unknown = [k for k in spec if k not in GRID_KEYS]
        if unknown:
            raise GridError(f"{path}: unknown keys {unknown}; a grid file has {list(GRID_KEYS)}")
        axes = spec.get("axes", {})
        bad = [k for k, v in axes.items() if not isinstance(v, list) or not v]
        if bad:
            raise GridError(f"grid {path.stem!r}: axes {bad} must be non-empty lists of values")
        return cls(name=path.stem, path=path, description=spec.get("description", ""),
                   bases=tuple(spec.get("variants", ["reduced"])), recipe=spec.get("recipe", "quick"),
                   seeds=tuple(spec.get("seeds", [0])),
                   axes={k: [_value(x) for x in v] for k, v in axes.items()},
                   datasets={**data_entries.shared_entries(), **spec.get("datasets", {})})

    @property
    def variant_axes(self) -> dict:
        return {k: v for k, v in self.axes.items() if k != RECIPE_AXIS}

    @property
    def recipes(self) -> list[str]:
        return list(self.axes.get(RECIPE_AXIS, [self.recipe]))

    def variants(self, overrides: dict | None = None, defaults: dict | None = None) -> list[GridVariant]:
        """The grid's distinct variants (base presets x axes), labelled by what the axes set."""
        axes = self.variant_axes
        fields = {f.name for f in dataclasses.fields(Variant)}
        unknown = [k for k in [*axes, *(overrides or {}), *(defaults or {})] if k not in fields]
        if unknown:
            raise GridError(f"grid {self.name!r}: unknown variant fields {unknown}; fields are {sorted(fields)}")
        out: dict[str, GridVariant] = {}
        for base in self.bases:
            for combo in itertools.product(*axes.values()):
                values = tuple(zip(axes, combo))
                changes = {**_applicable(defaults, base), **dict(values), **(overrides or {})}
                try:
                    v = create_variant(base, **changes)
                except (ValueError, KeyError) as err:
                    shown = {**dict(values), **(overrides or {})}
                    raise GridError(f"grid {self.name!r}: {base}{' with ' + str(shown) if shown else ''}: "
                                    f"{err}") from err
                label = base + "".join(f" {k}={axis_label(val)}" for k, val in values)
                out.setdefault(v.key, GridVariant(label, v, base, values))
        return list(out.values())

    def jobs(self, data: list[str] | None = None, categories: list[str] | None = None,
             seeds: list[int] | None = None, epochs: int | None = None, recipe: str | None = None,
             overrides: dict | None = None) -> list[Job]:
        """Every (variant x dataset x category x seed x recipe) job, in a stable order: a
        variant axis varies fastest, so jobs that share a student run back to back. Everything a
        job needs is checked here, before any job runs: fields, recipes, seeds, epochs, data."""
        recipes = [recipe] if recipe else self.recipes
        for rec in recipes:
            get_recipe(rec)
        seeds = list(seeds if seeds is not None else self.seeds)
        if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
            raise GridError(f"seeds must be whole numbers >= 0, got {seeds}")
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise GridError(f"epochs must be a whole number >= 1, got {epochs!r}")
        self.variants(overrides)  # the grid's own fields, whatever the data
        recipe_axis = RECIPE_AXIS in self.axes and not recipe
        jobs = []
        for choice in data_entries.choose(self.datasets, data, categories, self.name):
            variants = self.variants(overrides, choice.defaults)
            for cat, seed, rec, gv in itertools.product(choice.categories, seeds, recipes, variants):
                axes = gv.axes + (((RECIPE_AXIS, rec),) if recipe_axis else ())
                jobs.append(Job(gv.label, gv.variant, choice.path, cat, int(seed), rec, epochs,
                                entry=choice.entry, grid=self.name, axes=axes))
        return jobs

    def default_results(self, data: list[str] | None) -> str:
        return data_entries.default_results(self.datasets, data)


def list_grids() -> list[tuple[str, str]]:
    return [(p.stem, read_toml(p).get("description", "")) for p in sorted(ABLATIONS.glob("*.toml"))
            if p != SHARED_DATASETS]


def _value(x):
    """An axis value as the Variant holds it (lists are tuples), so labels and lookups agree."""
    return tuple(x) if isinstance(x, list) else x


def axis_label(value) -> str:
    """(1, 2) -> "1+2"; anything else as str()."""
    return "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _applicable(defaults: dict | None, base: str) -> dict:
    """A dataset entry's variant fields, only where the base preset has the field (not None)."""
    preset = PRESETS.get(base)
    return {k: v for k, v in (defaults or {}).items() if preset is None or getattr(preset, k, None) is not None}


def split_items(text: str | None) -> list[str]:
    """'a=1,layers=[1,2],b=x' -> ['a=1', 'layers=[1,2]', 'b=x']: commas inside brackets stay."""
    items, depth, cur = [], 0, ""
    for ch in text or "":
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(ch, 0)
        if ch == "," and depth <= 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    return [i.strip() for i in [*items, cur] if i.strip()]


def parse_overrides(items: list[str] | None) -> dict:
    """['teacher=tf_efficientnet_lite0', 'alpha=0.5'] -> fields, values parsed as TOML (a bare word
    stays text; the Variant field's type decides what it means)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise GridError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value.strip()
    return out
