"""Peers in the suite's harness: anomalib's STFPM and PatchCore, built from anomalib's own torch
classes and trained and scored by the suite's job runner (same split, resize, recipe, metric code
and record format as ours).

Nothing of their models is rewritten here. The two detectors below adapt anomalib's models to what
`run_job` drives (teacher features, a per-image loss, maps over a test set, scores from maps), and
load the teacher's weights through the suite's own resolution (local file, packaged Lite0, hub;
sha256 in the record), never anomalib's download. What anomalib's Lightning modules do around the
torch models (pre-processing, optimiser, post-processing) is the harness's here, for both sides
alike; the README's "where we read it differently" table lists each difference.

- `anomalib-stfpm`: `STFPMModel` (teacher, student, anomaly map), `STFPMLoss` per image, so the
  recipe reduces the batch as it does for ours (`sum`: exactly anomalib's loss). Trained by
  `train.fit`, the loop that trains ours.
- `anomalib-patchcore`: `PatchcoreModel` (embedding, memory bank, k-center-greedy coreset, nearest
  neighbours, reweighted image score, map). One pass over the same training images; the coreset
  sampling draws from torch's and numpy's global generators, seeded here from the run's seed.
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.backbones import WeightsError, _load_pretrained, resolve_weights, timm_layer_names
from bench.data import to_unit_float
from bench.detector import MAP_PATH, Detector, gaussian_blur, image_score, layer_maps, upsample_sum
from bench.errors import BenchError
from bench.variants import PEERS, Variant

INSTALL_HINT = "pip install -c constraints-cpu.txt -e '.[peers]'"


class PeerError(BenchError, RuntimeError):
    """A peer cannot be built here (anomalib, the `peers` extra, is missing or broken)."""


def anomalib_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("anomalib")
    except metadata.PackageNotFoundError:
        return None


def require_anomalib(method: str) -> str:
    """anomalib's version, or PeerError naming the extra: said once, before any job runs."""
    try:
        with quiet_anomalib():
            import anomalib  # noqa: F401
            from anomalib.models.image.patchcore import torch_model  # noqa: F401
            from anomalib.models.image.stfpm import torch_model as _  # noqa: F401,F811
    except Exception as err:  # noqa: BLE001 - absent, or present with a broken dependency: both said plainly
        raise PeerError(f"method {method!r} runs anomalib's own model, and anomalib is not usable here "
                        f"({type(err).__name__}: {str(err)[:200]}). Install the `peers` extra: {INSTALL_HINT}") from err
    return anomalib_version() or "unknown"


def check_peers(variants) -> None:
    """Every peer of these variants can be built: a missing anomalib stops a grid before its first job."""
    methods = sorted({v.method for v in variants if v.method in PEERS})
    if methods:
        require_anomalib(methods[0])


@contextlib.contextmanager
def quiet_anomalib():
    """anomalib's import warns about its own deprecated modules (dinov2, timm.models.layers): not ours to act on."""
    from bench import _tv_compat
    _tv_compat.install()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


@contextlib.contextmanager
def no_download(module):
    """anomalib's STFPMModel builds its teacher with pre_trained=True (a timm download); the suite
    loads the teacher's weights itself (or times random ones), so the download is turned off while
    the model is built: the one patch of anomalib, undone on exit."""
    real = module.TimmFeatureExtractor

    def offline(*args, **kwargs):
        kwargs["pre_trained"] = False
        return real(*args, **kwargs)
    module.TimmFeatureExtractor = offline
    try:
        yield
    finally:
        module.TimmFeatureExtractor = real


def load_teacher(extractor: nn.Module, variant: Variant, weights: dict | None):
    """The suite's teacher weights (resolved, strictly loaded, as for our detectors) copied into
    anomalib's TimmFeatureExtractor; returns the weight source and the teacher's input mean and std."""
    source = resolve_weights(variant.teacher, variant.teacher_init, weights)
    full = _load_pretrained(variant.teacher, source)
    state, own = full.state_dict(), extractor.feature_extractor.state_dict()
    missing = [k for k in own if k not in state]
    shape = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or shape:
        raise WeightsError(f"{variant.teacher}: anomalib's feature extractor does not match timm's model "
                           f"({len(missing)} tensors missing, e.g. {missing[:1]}; {len(shape)} of another shape)")
    extractor.feature_extractor.load_state_dict({k: state[k] for k in own})
    extractor.backbone, extractor.source = variant.teacher, source
    extractor.taps = [timm_layer_names(full)[i] for i in variant.layers]
    cfg = full.pretrained_cfg
    return (torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
            torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))


class _Branch(nn.Module):
    """What run_job, fit and the checkpoints see of a peer: its teacher and the part that learns."""

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        self.teacher, self.student = teacher, student


class _MemoryBank(nn.Module):
    """PatchCore's learned state as a checkpoint keeps it: the memory bank alone, not the backbone."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self._model = [model]   # a list, so the backbone is not a submodule of this one

    def state_dict(self, *args, **kwargs):
        return {"memory_bank": self._model[0].memory_bank.detach().cpu().clone()}

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        bank = self._model[0].memory_bank
        self._model[0].memory_bank = state["memory_bank"].to(bank.device, bank.dtype)


class PeerDetector(Detector):
    """An anomalib model in the suite's harness, as a Detector of one branch: the suite's evaluation
    (blur_sigma, score; Detector.score_maps) applies to the maps the peer gives, as it does to ours."""

    part_names = ("main",)       # branch_maps' further parts (PatchCore's own scores) are no maps

    def __init__(self, variant: Variant, model: nn.Module, branch: _Branch, mean, std):
        super().__init__([branch], score=variant.score, blur_sigma=variant.blur_sigma)
        self.variant, self.model = variant, model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.implementation = {"package": "anomalib", "version": anomalib_version(),
                               "input_normalisation": {"mean": mean.flatten().tolist(), "std": std.flatten().tolist(),
                                                       "from": f"timm pretrained_cfg of {variant.teacher}"}}

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @property
    def map_path(self) -> str:
        """`anomalib` where the map is the peer's own (STFPM's product, PatchCore's), else the suite's."""
        own = self.variant.method == "anomalib-patchcore" or self.variant.map_weighting == "product"
        return "anomalib" if own else MAP_PATH


class StfpmPeer(PeerDetector):
    """anomalib's STFPMModel; its loss per image is anomalib's STFPMLoss on that image alone."""

    def __init__(self, variant: Variant, weights: dict | None = None):
        with quiet_anomalib():
            from anomalib.models.image.stfpm import torch_model
            from anomalib.models.image.stfpm.loss import STFPMLoss
        with no_download(torch_model):
            model = torch_model.STFPMModel(layers=list(variant.layers), backbone=variant.teacher)
        mean, std = load_teacher(model.teacher_model, variant, weights)
        super().__init__(variant, model, _Branch(model.teacher_model, model.student_model), mean, std)
        self.criterion = STFPMLoss()
        self.implementation.update(model="anomalib.models.image.stfpm.torch_model.STFPMModel",
                                   loss="anomalib.models.image.stfpm.loss.STFPMLoss (per image)",
                                   anomaly_map="anomalib's AnomalyMapGenerator (layer maps multiplied)"
                                   if variant.map_weighting == "product"
                                   else f"the suite's Eq. 9-10 ({variant.map_weighting}) on anomalib's features")

    def student_parameters(self):
        return list(self.model.student_model.parameters())

    def teacher_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        with torch.no_grad():
            return [list(self.model.teacher_model(self.normalize(x)).values())]

    def student_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model.student_model(self.normalize(x)).values())

    def loss(self, x: torch.Tensor, fts: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        """STFPMLoss of each image -> (B,): the recipe reduces the batch, as it does for ours."""
        ft = (fts if fts is not None else self.teacher_features(x))[0]
        fs = self.student_features(x)
        return torch.stack([self.criterion({i: t[b:b + 1].float() for i, t in enumerate(ft)},
                                           {i: s[b:b + 1] for i, s in enumerate(fs)}) for b in range(len(x))])

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """anomalib's map (its layer maps upsampled and multiplied) as one layer map at the image size, or the
        suite's Eq. 2 layer maps of anomalib's features."""
        ft, fs = self.teacher_features(x)[0], self.student_features(x)
        if self.variant.map_weighting == "product":
            return [[self.model.anomaly_map_generator(teacher_features=dict(enumerate(ft)),
                                                      student_features=dict(enumerate(fs)),
                                                      image_size=tuple(x.shape[-2:])).squeeze(1)]]
        return [layer_maps(ft, fs, self.variant.map_weighting)]


@dataclass
class MemoryBankSummary:
    """What PatchCore's one pass over the training images made (the record's `train`)."""
    epochs: int
    best_epoch: int
    n_embeddings: int
    memory_bank: int
    coreset_ratio: float
    coreset_seed: int
    embed_s: float
    coreset_s: float
    wall_s: float


class PatchcorePeer(PeerDetector):
    """anomalib's PatchcoreModel: memory bank of the training images' patch embeddings, coreset
    subsampled; image score its own (native) or a statistic of its map."""

    def __init__(self, variant: Variant, weights: dict | None = None):
        with quiet_anomalib():
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel
        model = PatchcoreModel(layers=list(variant.layers), backbone=variant.teacher, pre_trained=False)
        mean, std = load_teacher(model.feature_extractor, variant, weights)
        super().__init__(variant, model, _Branch(model.feature_extractor, _MemoryBank(model)), mean, std)
        self.implementation.update(model="anomalib.models.image.patchcore.torch_model.PatchcoreModel",
                                   coreset="anomalib.models.components.KCenterGreedy (seeded from the run's seed)",
                                   num_neighbors=model.num_neighbors,
                                   anomaly_map="anomalib's AnomalyMapGenerator (nearest upsampling, Gaussian blur 4)",
                                   native_score="anomalib's compute_anomaly_score (reweighted nearest-neighbour distance)")

    def student_parameters(self):
        return []

    @torch.no_grad()
    def branch_maps(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """[[anomalib's map (B,H,W)], [anomalib's own image scores (B,)]]: a second part that is no map."""
        self.model.eval()
        out = self.model(self.normalize(x))
        return [[out.anomaly_map.squeeze(1)], [out.pred_score.reshape(-1)]]

    def score_maps(self, branches: list[list[torch.Tensor]], size: tuple[int, int],
                   full_size: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        maps = gaussian_blur(upsample_sum(branches[0], size), self.blur_sigma)
        return (branches[1][0] if self.score == "native" else image_score(maps, self.score)), maps

    @staticmethod
    def fit_fn(detector: PatchcorePeer, train_images: torch.Tensor, val_images: torch.Tensor, recipe, epochs: int,
               seed: int, device="cpu", progress: bool = True, desc: str = "memory bank") -> MemoryBankSummary:
        """One pass over the training images (the validation images are not used: nothing is
        selected by a loss), then anomalib's coreset sampling seeded from SEED."""
        from bench.train import seed_everything
        start = time.perf_counter()
        model = detector.to(device).model
        model.train()   # PatchcoreModel stores embeddings in train mode; its extractor stays in eval
        model.embedding_store.clear()
        with torch.no_grad():
            for batch in tqdm(train_images.split(recipe.batch_size), desc=desc, unit="batch", disable=not progress,
                              leave=False):
                model(detector.normalize(to_unit_float(batch, device)))
        n = sum(len(e) for e in model.embedding_store)
        embedded = time.perf_counter()
        seed_everything(seed)   # KCenterGreedy's start point and projection: torch's and numpy's generators
        with warnings.catch_warnings():  # its deprecation of an argument we do not pass
            warnings.simplefilter("ignore", DeprecationWarning)
            model.subsample_embedding(detector.variant.coreset_ratio)
        model.eval()
        done = time.perf_counter()
        return MemoryBankSummary(1, 1, n, len(model.memory_bank), detector.variant.coreset_ratio, seed,
                                 round(embedded - start, 2), round(done - embedded, 2), round(done - start, 2))


def build_peer(variant: Variant, weights: dict | None = None) -> PeerDetector:
    require_anomalib(variant.method)
    builders = {"anomalib-stfpm": StfpmPeer, "anomalib-patchcore": PatchcorePeer}
    return builders[variant.method](variant, weights)


class _PatchcoreForTiming(nn.Module):
    """PatchCore as the timing harness drives a peer: `network` scope its backbone's features (its
    teacher; it has no student), `map` scope its own forward (embedding, nearest neighbours in the
    memory bank, image score, map)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.teacher_model, self.student_model = model, model.feature_extractor, nn.Identity()

    def forward(self, x):
        return self.model(x)


def timing_model(variant: Variant, device, image_size: int = 256, n_train: int = 200) -> nn.Module:
    """A peer's anomalib model for the timing harness (teacher weights random: they do not change
    speed). PatchCore's memory bank is random, of the size its coreset keeps from N_TRAIN training
    images (the quick recipe's 200) at this image size: search cost is its rows times its width."""
    det = build_peer(variant).eval()
    if variant.method == "anomalib-stfpm":
        return det.model.to(device)
    model = det.model
    with torch.no_grad():
        per_image = model.reshape_embedding(model.generate_embedding(
            {k: model.feature_pooler(f) for k, f in model.feature_extractor(torch.zeros(1, 3, image_size, image_size)).items()}))
    model.memory_bank = torch.randn(max(1, int(n_train * len(per_image) * variant.coreset_ratio)), per_image.shape[1])
    return _PatchcoreForTiming(model).eval().to(device)

