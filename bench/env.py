"""What a record must say about where it came from: software, hardware, git revision."""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch

from bench.errors import DeviceError

ROOT = Path(__file__).resolve().parent.parent


def check_device(device: str) -> str:
    """DEVICE if this machine has it ('cpu', 'cuda', 'cuda:1', 'mps'), else DeviceError: torch's own
    failure comes from deep inside the first job (an AssertionError on CPU-only builds)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} asked for, but torch sees no CUDA device here "
                              f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: torch sees no MPS device here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"--device {device!r}: the suite runs on cpu, cuda, cuda:N or mps")
    return device


@lru_cache
def git_revision() -> str:
    # a copy of the tree sent to another machine (a GPU node, an sdist) may carry no .git, or a stale
    # one: whoever sent it can say which commit it is
    if os.environ.get("BENCH_GIT_REVISION"):
        return os.environ["BENCH_GIT_REVISION"]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@lru_cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def software() -> dict:
    import numpy
    import sklearn
    import timm
    out = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "numpy": numpy.__version__, "scikit-learn": sklearn.__version__}
    try:
        import torchvision
        out["torchvision"] = torchvision.__version__
    except Exception:  # noqa: BLE001 - recorded, never fatal
        out["torchvision"] = "unavailable"
    return out


def hardware(device: str | torch.device) -> dict:
    device = torch.device(device)
    info = {"device": device.type, "device_name": device_name(device), "cpu": cpu_model(),
            "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}
    if device.type == "cuda":
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    driver=_nvidia_driver())
    return info


def _nvidia_driver() -> str:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"
