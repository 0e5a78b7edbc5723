"""The registry of detector variants: a frozen dataclass per variant, a stable key, named presets.

    list_variants("mixed*")            -> names
    create_variant("reduced", alpha=0.5) -> Variant (a preset with fields overridden)
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import typing
from dataclasses import dataclass

from bench.backbones import timm  # timm behind the torchvision compatibility shim
from bench.detector import FUSIONS, MAP_WEIGHTINGS, SCORES
from bench.errors import UnknownNameError, VariantError
from bench.students import STUDENT_KINDS

OURS = ("reduced", "stpm", "mixed")
# Peers run by the same job runner through their authors' own classes (bench.peers; the `peers` extra).
PEERS = ("anomalib-stfpm", "anomalib-patchcore")
METHODS = (*OURS, *PEERS)
# What only a peer has: PatchCore keeps a memory bank, no student; its own image score ("native", the
# nearest-neighbour distance reweighted by the bank's neighbourhood) is not a statistic of its map;
# anomalib's STFPM multiplies its layer maps ("product").
PEER_STUDENT = {"anomalib-stfpm": "full", "anomalib-patchcore": "none"}
PEER_SCORES = {"anomalib-patchcore": ("native",)}
PEER_MAP_WEIGHTINGS = {"anomalib-stfpm": ("product",)}
# Methods that learn in one pass over the training images (no epochs, no validation loss).
ONE_PASS_METHODS = ("anomalib-patchcore",)
# Fields that change only evaluation: variants differing in these share one trained student.
EVAL_ONLY_FIELDS = ("fusion", "score", "blur_sigma", "map_weighting")
# Fields added after records existed: at this value they are left out of the keys, so the keys (and
# record file names) of every earlier variant stay what they were.
LATER_FIELDS = {"map_weighting": "plain", "pool_stem": False, "coreset_ratio": None}
# Every supported backbone family (timm ResNet- and EfficientNet-style) has layers 0..4 (timm's out_indices).
N_LAYERS = 5
# Both families downsample by 32; smaller inputs or other sizes leave the deepest level ragged.
STRIDE = 32
INITS = ("pretrained", "random")


@dataclass(frozen=True)
class Variant:
    method: str
    teacher: str = "resnet18"
    layers: tuple[int, ...] = (0, 1, 2, 3)     # teacher layers, timm's out_indices (0 = stem)
    student: str = "reduced"
    pooling: bool = True
    teacher_init: str = "pretrained"
    teacher2: str | None = None                # MixedTeacher's second teacher
    layers2: tuple[int, ...] = ()
    student2: str = "conv"
    teacher2_init: str = "pretrained"
    alpha: float = 0.1                          # Eq. 8
    fusion: str = "minmax"                      # Eq. 11 reading
    score: str = "sum"                          # Eq. 12 (sum) or max; PatchCore's own: native
    blur_sigma: float = 4.0
    image_size: int = 256
    map_weighting: str = "plain"                # Eq. 9-10: layers summed plainly, or each / (h*w) (official code)
    pool_stem: bool = False                     # Eq. 1 on the stem layer too (the stem-cost ablation)
    coreset_ratio: float | None = None          # PatchCore's memory bank: the fraction kept by coreset sampling

    def __post_init__(self):
        for name, value in coerce_fields({f.name: getattr(self, f.name) for f in dataclasses.fields(self)}).items():
            object.__setattr__(self, name, value)
        if self.pool_stem and 0 not in self.layers:  # no stem layer to pool: the same detector, one key
            object.__setattr__(self, "pool_stem", False)
        problems = []
        if self.pool_stem and not self.pooling:
            problems.append("pool_stem pools the stem layer as Eq. 1 pools the others: it needs pooling")
        if self.alpha < 0:
            problems.append(f"alpha {self.alpha:g} is negative (Eq. 8 weighs the second teacher's loss by it)")
        if self.blur_sigma < 0:
            problems.append(f"blur_sigma {self.blur_sigma:g} is negative (0 means no blur)")
        if self.image_size <= 0 or self.image_size % STRIDE:
            problems.append(f"image_size {self.image_size} must be a positive multiple of {STRIDE} (the networks' stride)")
        for name in ("layers", "layers2"):
            bad = [i for i in getattr(self, name) if not 0 <= i < N_LAYERS]
            if bad:
                problems.append(f"{name} {bad} out of range: layers are 0..{N_LAYERS - 1} (timm's out_indices)")
        for name in ("teacher_init", "teacher2_init"):
            if getattr(self, name) not in INITS:
                problems.append(f"{name} {getattr(self, name)!r} not in {INITS}")
        for name in ("teacher", "teacher2"):
            if getattr(self, name) is not None and not _is_backbone(getattr(self, name)):
                problems.append(f"{name} {getattr(self, name)!r} is not a timm model name "
                                "(e.g. resnet18, efficientnet_b0, tf_efficientnet_lite0)")
        if self.method not in METHODS:
            problems.append(f"method {self.method!r} not in {METHODS}")
        if self.method in PEERS:
            problems += self._peer_problems()
        elif self.student not in STUDENT_KINDS:
            problems.append(f"student {self.student!r} not in {STUDENT_KINDS}")
        if self.student2 not in STUDENT_KINDS:
            problems.append(f"student2 {self.student2!r} not in {STUDENT_KINDS}")
        if self.fusion not in FUSIONS:
            problems.append(f"fusion {self.fusion!r} not in {FUSIONS}")
        weightings = (*MAP_WEIGHTINGS, *PEER_MAP_WEIGHTINGS.get(self.method, ()))
        if self.map_weighting not in weightings:
            problems.append(f"map_weighting {self.map_weighting!r} not in {weightings}")
        scores = (*SCORES, *PEER_SCORES.get(self.method, ()))
        if self.score not in scores:
            problems.append(f"score {self.score!r} not in {scores}")
        if (self.method == "anomalib-patchcore") != (self.coreset_ratio is not None):
            problems.append("method 'anomalib-patchcore' and only it takes a coreset_ratio")
        elif self.coreset_ratio is not None and not 0 < self.coreset_ratio <= 1:
            problems.append(f"coreset_ratio {self.coreset_ratio:g} must be in (0, 1]")
        if not self.layers:
            problems.append("layers is empty")
        if (self.method == "mixed") != (self.teacher2 is not None):
            problems.append("method 'mixed' and only it takes a second teacher (teacher2)")
        if self.teacher2 is not None and not self.layers2:
            problems.append("teacher2 needs layers2")
        if problems:
            raise VariantError("invalid variant: " + "; ".join(problems))

    def _peer_problems(self) -> list[str]:
        """A peer's fields must describe the peer's model as its authors built it."""
        problems = []
        if self.student != PEER_STUDENT[self.method]:
            problems.append(f"{self.method} has student {PEER_STUDENT[self.method]!r} (its authors' own), "
                            f"not {self.student!r}")
        if self.pooling or self.pool_stem:
            problems.append(f"{self.method} has no pooling (Eq. 1 is the reduced student's)")
        if self.method == "anomalib-patchcore" and self.map_weighting != "plain":
            problems.append("anomalib-patchcore concatenates its layers: map_weighting does not apply")
        return problems

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

    @classmethod
    def from_record(cls, record) -> Variant:
        """The variant a run or timing record was made with (fields added since: their defaults)."""
        return cls(**record.variant)

    def describe(self) -> str:
        main = (f"{self.teacher}{list(self.layers)}/{self.student}{'+AAP' if self.pooling else ''}"
                f"{' stem pooled' if self.pool_stem else ''}")
        if self.teacher_init != "pretrained":
            main += f"({self.teacher_init})"
        if self.teacher2:
            aux = f"{self.teacher2}{list(self.layers2)}/{self.student2}"
            if self.teacher2_init != "pretrained":
                aux += f"({self.teacher2_init})"
            main = f"{main} + {aux} a={self.alpha:g} {self.fusion}"
        if self.method in PEERS:
            main = f"{self.method}: {self.teacher}{list(self.layers)}"
            main += f"({self.teacher_init})" if self.teacher_init != "pretrained" else ""
            main += f" coreset {self.coreset_ratio:g}" if self.coreset_ratio is not None else ""
            main += f" layers {self.map_weighting}" if self.method == "anomalib-stfpm" else ""
            main += f" blur {self.blur_sigma:g}" if self.blur_sigma else ""
            return f"{main} {self.score}"
        return f"{main} {self.score}" + (" area-weighted" if self.map_weighting == "area" else "")


def _is_backbone(name: str) -> bool:
    return isinstance(name, str) and bool(timm.is_model(name))


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(name: str, kind, value):
    """VALUE as the field's type, or VariantError: `--set pooling=no` must not store the truthy "no"."""
    args = typing.get_args(kind)
    if type(None) in args:  # optional field: "none" clears it
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        kind = next(a for a in args if a is not type(None))
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).lower() in (*_TRUE, *_FALSE):
            return str(value).lower() in _TRUE
        raise VariantError(f"{name} expects true or false, not {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise VariantError(f"{name} expects a number, not {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise VariantError(f"{name} expects a number, not {value!r}") from None
        if kind is int:
            if number != int(number):
                raise VariantError(f"{name} expects a whole number, not {value!r}")
            return int(number)
        return number
    if typing.get_origin(kind) is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, str):
            items = [v for v in value.replace("+", ",").strip("[]()").split(",") if v.strip()]
        return tuple(_coerce(f"{name} item", int, v) for v in items)
    if kind is str:
        if not isinstance(value, str):
            raise VariantError(f"{name} expects a name, not {value!r}")
        return value
    return value


def coerce_fields(fields: dict) -> dict:
    """Fields given as text or TOML values, each converted to its Variant field's type."""
    hints = _field_types()
    unknown = sorted(set(fields) - set(hints))
    if unknown:
        raise VariantError(f"unknown variant fields {unknown}; fields are {sorted(hints)}")
    return {k: _coerce(k, hints[k], v) for k, v in fields.items()}


def _field_types() -> dict:
    global _HINTS
    if _HINTS is None:
        _HINTS = typing.get_type_hints(Variant)
    return _HINTS


_HINTS: dict | None = None


def _digest(fields: dict) -> str:
    fields = {k: v for k, v in fields.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


_MIXED = dict(method="mixed", teacher="resnet18", layers=(0, 1, 2), student="reduced", pooling=True,
              teacher2="efficientnet_b0", layers2=(3, 4), student2="conv", alpha=0.1)
_OFFLINE = dict(teacher="tf_efficientnet_lite0")
_PATCHCORE = dict(method="anomalib-patchcore", teacher="wide_resnet50_2", layers=(2, 3), student="none", pooling=False,
                  blur_sigma=0.0, score="native", coreset_ratio=0.1)

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
    # anomalib's STFPM as it ships: resnet18 layer1..3, a full random-init student, layer maps
    # multiplied, no blur, image score the map's max.
    "anomalib-stfpm": Variant("anomalib-stfpm", layers=(1, 2, 3), student="full", pooling=False,
                              map_weighting="product", blur_sigma=0.0, score="max"),
    # anomalib's PatchCore as it ships: WRN50-2 layer2+layer3 (stride 8 and 16), 10 % coreset, 9
    # neighbours for its reweighted image score (`native`); its map is its own (nearest upsampling,
    # blur 4), so the suite adds no blur.
    "anomalib-patchcore": Variant(**_PATCHCORE),
    # PatchCore-1% (Roth et al.'s own name for it): the coreset a CPU affords. anomalib's k-center-greedy
    # costs in proportion to the patches it keeps (the 1 % records' train.coreset_s: 157-1320 s on 2 cores).
    "anomalib-patchcore-1pct": Variant(**{**_PATCHCORE, "coreset_ratio": 0.01}),
}


def list_variants(pattern: str = "*") -> list[str]:
    return sorted(n for n in PRESETS if fnmatch.fnmatch(n, pattern))


def create_variant(name: str, **overrides) -> Variant:
    if name not in PRESETS:
        raise UnknownNameError(f"unknown variant {name!r}; registered: {', '.join(list_variants())}")
    return dataclasses.replace(PRESETS[name], **coerce_fields(overrides))
