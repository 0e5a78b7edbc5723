"""The registry of detector variants: a frozen dataclass per variant, a stable key, named presets.

    list_variants("mixed*")            -> names
    create_variant("reduced", alpha=0.5) -> Variant (a preset with fields overridden)
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from dataclasses import dataclass

from bench.detector import FUSIONS, MAP_WEIGHTINGS, SCORES
from bench.students import STUDENT_KINDS

METHODS = ("reduced", "stpm", "mixed")
# Fields that change only evaluation: variants differing in these share one trained student.
EVAL_ONLY_FIELDS = ("fusion", "score", "blur_sigma", "map_weighting")
# Fields added after records existed: at this value they are left out of the keys, so the keys (and
# record file names) of every earlier variant stay what they were.
LATER_FIELDS = {"map_weighting": "plain"}


@dataclass(frozen=True)
class Variant:
    method: str
    teacher: str = "resnet18"
    layers: tuple[int, ...] = (0, 1, 2, 3)     # timm feature levels (out_indices)
    student: str = "reduced"
    pooling: bool = True
    teacher_init: str = "pretrained"
    teacher2: str | None = None                # MixedTeacher's second teacher
    layers2: tuple[int, ...] = ()
    student2: str = "conv"
    teacher2_init: str = "pretrained"
    alpha: float = 0.1                          # Eq. 8
    fusion: str = "minmax"                      # Eq. 11 reading
    score: str = "sum"                          # Eq. 12 (sum) or max
    blur_sigma: float = 4.0
    image_size: int = 256
    map_weighting: str = "plain"                # Eq. 9-10: levels summed plainly, or each / (h*w) (official code)

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(int(v) for v in self.layers))
        object.__setattr__(self, "layers2", tuple(int(v) for v in self.layers2))
        object.__setattr__(self, "alpha", float(self.alpha))
        object.__setattr__(self, "blur_sigma", float(self.blur_sigma))
        problems = []
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} not in {METHODS}")
        for name in ("student", "student2"):
            if getattr(self, name) not in STUDENT_KINDS:
                problems.append(f"{name} {getattr(self, name)!r} not in {STUDENT_KINDS}")
        if self.fusion not in FUSIONS:
            problems.append(f"fusion {self.fusion!r} not in {FUSIONS}")
        if self.map_weighting not in MAP_WEIGHTINGS:
            problems.append(f"map_weighting {self.map_weighting!r} not in {MAP_WEIGHTINGS}")
        if self.score not in SCORES:
            problems.append(f"score {self.score!r} not in {SCORES}")
        if not self.layers:
            problems.append("layers is empty")
        if (self.method == "mixed") != (self.teacher2 is not None):
            problems.append("method 'mixed' and only it takes a second teacher (teacher2)")
        if self.teacher2 is not None and not self.layers2:
            problems.append("teacher2 needs layers2")
        if problems:
            raise ValueError("invalid variant: " + "; ".join(problems))

    def fields(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        return _digest(self.fields())

    @property
    def train_key(self) -> str:
        """Key of what training depends on; variants differing only in EVAL_ONLY_FIELDS share it."""
        return _digest({k: v for k, v in self.fields().items() if k not in EVAL_ONLY_FIELDS})

    @property
    def arch_key(self) -> str:
        """Key of what inference cost depends on: not the weights, not the evaluation-time readings."""
        skip = (*EVAL_ONLY_FIELDS, "teacher_init", "teacher2_init", "alpha")
        return _digest({k: v for k, v in self.fields().items() if k not in skip})

    def describe(self) -> str:
        main = f"{self.teacher}{list(self.layers)}/{self.student}{'+AAP' if self.pooling else ''}"
        if self.teacher_init != "pretrained":
            main += f"({self.teacher_init})"
        if self.teacher2:
            aux = f"{self.teacher2}{list(self.layers2)}/{self.student2}"
            if self.teacher2_init != "pretrained":
                aux += f"({self.teacher2_init})"
            main = f"{main} + {aux} a={self.alpha:g} {self.fusion}"
        return f"{main} {self.score}" + (" area-weighted" if self.map_weighting == "area" else "")


def _digest(fields: dict) -> str:
    fields = {k: v for k, v in fields.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


_MIXED = dict(method="mixed", teacher="resnet18", layers=(0, 1, 2), student="reduced", pooling=True,
              teacher2="efficientnet_b0", layers2=(3, 4), student2="conv", alpha=0.1)
_OFFLINE = dict(teacher="tf_efficientnet_lite0")

PRESETS: dict[str, Variant] = {
    # The paper (§5.2): ResNet-18 teacher; stem + layer1..3; reduced student with pooling.
    "reduced": Variant("reduced"),
    # STPM (Wang et al. 2021): ResNet-18, layer1..3, full student, no pooling.
    "stpm": Variant("stpm", layers=(1, 2, 3), student="full", pooling=False),
    # MixedTeacher (§4, §5.2): ResNet-18 stem+layer1+layer2 reduced + EfficientNet-B0 blocks "5, 6".
    "mixed": Variant(**_MIXED),
    # The official code's readings of the ambiguities.
    "mixed-official": Variant(**{**_MIXED, "student2": "copy", "fusion": "l2rows"}),
    # Teachers whose real ImageNet weights exist offline (see README): Lite0 for ResNet-18.
    "reduced-lite0": Variant("reduced", **_OFFLINE),
    "stpm-lite0": Variant("stpm", layers=(1, 2, 3), student="full", pooling=False, **_OFFLINE),
    "mixed-lite0": Variant(**{**_MIXED, **_OFFLINE}),
}


def list_variants(pattern: str = "*") -> list[str]:
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def create_variant(name: str, **overrides) -> Variant:
    if name not in PRESETS:
        raise KeyError(f"unknown variant {name!r}; registered: {', '.join(list_variants())}")
    return dataclasses.replace(PRESETS[name], **overrides)


def variant_from_fields(fields: dict) -> Variant:
    return Variant(**fields)
