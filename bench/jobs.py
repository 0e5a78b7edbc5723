"""A job: one variant on one dataset category with one seed and recipe; where its record and its
student's checkpoint live, and which grid (and axis values) made it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.train import get_recipe
from bench.variants import ONE_PASS_METHODS, Variant


@dataclass(frozen=True)
class Job:
    variant_name: str
    variant: Variant
    data: str
    category: str
    seed: int = 0
    recipe: str = "quick"
    epochs: int | None = None        # None: the recipe's epochs for this method
    dataset: str | None = None       # None: the data folder's name
    entry: str | None = None         # the dataset entry (named data root) DATA came from
    grid: str | None = None          # the grid file that made the job
    axes: tuple[tuple[str, object], ...] = ()   # its axis values, as (axis, value) in the file's order

    @property
    def n_epochs(self) -> int:
        if self.variant.method in ONE_PASS_METHODS:  # a memory bank is one pass, whatever the recipe or --epochs
            return 1
        return self.epochs if self.epochs is not None else get_recipe(self.recipe).epochs_for(self.variant.method)

    @property
    def student_key(self) -> tuple:
        """Jobs with equal keys train the same student (they differ only in evaluation fields)."""
        return (self.variant.train_key, str(Path(self.data).resolve()), self.category, self.seed, self.recipe,
                self.n_epochs)

    @property
    def dataset_name(self) -> str:
        return self.dataset or Path(self.data).resolve().name

    @property
    def stem(self) -> str:
        return f"{self.variant.method}-{self.variant.key}_{self.recipe}-{self.n_epochs}ep_seed{self.seed}"

    def record_path(self, results: str | Path) -> Path:
        return Path(results) / "runs" / self.dataset_name / self.category / f"{self.stem}.json"

    def checkpoint_path(self, results: str | Path) -> Path:
        return (Path(results) / "checkpoints" / self.dataset_name / self.category /
                f"{self.variant.train_key}_{self.recipe}-{self.n_epochs}ep_seed{self.seed}.pt")

    def describe(self) -> str:
        return (f"{self.variant_name} [{self.variant.key}] {self.dataset_name}/{self.category} "
                f"seed {self.seed} {self.recipe} {self.n_epochs}ep")


def student_groups(jobs: list[Job]) -> list[list[Job]]:
    """Jobs that share one trained student (they differ only in evaluation fields), in grid order.
    A group runs in one process: the student is trained once and its branch maps are reused."""
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.student_key, []).append(j)
    return list(groups.values())
