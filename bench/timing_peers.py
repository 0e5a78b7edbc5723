"""anomalib's STFPM as a timing peer: its torch model (the model scope, as our detectors) and its
inference as its users run it (the Lightning module exported with `to_torch`, run by
`anomalib.deploy.TorchInferencer`). Teacher weights are left out: they do not change speed, and
anomalib would download them. Absent or broken anomalib: a message, and our timings go on."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import torch

from bench.peers import no_download


def _anomalib_stfpm():
    """anomalib's STFPM modules, or None with a message when anomalib is absent or broken."""
    try:
        from anomalib.models.image.stfpm import lightning_model, torch_model
    except Exception as err:  # noqa: BLE001 - absent or broken (a missing dependency), our timings go on
        print(f"anomalib's STFPM is not available ({type(err).__name__}: {err}): peer not timed "
              "(pip install 'bench[peers]')", file=sys.stderr)
        return None
    return torch_model, lightning_model


PEER_LAYERS = ["layer1", "layer2", "layer3"]


def stfpm_model(device: torch.device):
    """anomalib's STFPM torch model (resnet18, layer1..3): the model scope, as our detectors."""
    modules = _anomalib_stfpm()
    if modules is None:
        return None
    with no_download(modules[0]):
        model = modules[0].STFPMModel(layers=PEER_LAYERS, backbone="resnet18")
    return model.eval().to(device)


def stfpm_inferencer(device: torch.device, export_dir: Path | None):
    """anomalib's inference as its users run it: the Lightning module (its pre-processor, STFPM and
    post-processor) exported with `to_torch` and loaded by `anomalib.deploy.TorchInferencer`, called
    on a float batch. (Engine.predict wraps the same forward in a Lightning predict loop.)"""
    modules = _anomalib_stfpm()
    if modules is None:
        return None
    from anomalib.deploy import TorchInferencer
    with no_download(modules[0]):
        module = modules[1].Stfpm(backbone="resnet18", layers=PEER_LAYERS, evaluator=False, visualizer=False)
    path = module.eval().to_torch(Path(export_dir or tempfile.mkdtemp(prefix="bench-anomalib-")) / "anomalib-stfpm")
    # the file is the one written on the line above: trusting it is trusting this process
    trust = os.environ.get("TRUST_REMOTE_CODE")
    os.environ["TRUST_REMOTE_CODE"] = "1"
    try:
        return TorchInferencer(path=path, device=device.type)
    finally:
        if trust is None:
            del os.environ["TRUST_REMOTE_CODE"]
        else:
            os.environ["TRUST_REMOTE_CODE"] = trust
