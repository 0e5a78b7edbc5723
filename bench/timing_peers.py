"""anomalib's STFPM inference as its users run it (the Lightning module exported with `to_torch`,
run by `anomalib.deploy.TorchInferencer`), beside its torch model (bench.peers.timing_model, the
model scope, as our detectors). Teacher weights are left out: they do not change speed, and
anomalib would download them."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from bench.peers import quiet_anomalib, no_download

PEER_LAYERS = ["layer1", "layer2", "layer3"]


def stfpm_inferencer(device: torch.device, export_dir: Path | None):
    """anomalib's inference as its users run it: the Lightning module (its pre-processor, STFPM and
    post-processor) exported with `to_torch` and loaded by `anomalib.deploy.TorchInferencer`, called
    on a float batch. (Engine.predict wraps the same forward in a Lightning predict loop.)"""
    with quiet_anomalib():
        from anomalib.deploy import TorchInferencer
        from anomalib.models.image.stfpm import lightning_model, torch_model
    with no_download(torch_model):
        module = lightning_model.Stfpm(backbone="resnet18", layers=PEER_LAYERS, evaluator=False, visualizer=False)
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
