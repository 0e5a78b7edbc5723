"""Lets `import torchvision` (and so `import timm`) succeed when PyPI's CUDA torchvision wheel sits
on a CPU-only torch: its compiled ops cannot load, and its fake-op registrations then fail on the
missing `torchvision::nms` / `qnms` schemas. Defining the two schemas lets the import finish; the
ops stay unavailable (we never call them). Inert wherever torchvision's ops load normally."""
import torch


def install() -> None:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - present when torchvision's ops loaded
        return
    except (AttributeError, RuntimeError):
        pass
    try:
        import torchvision  # noqa: F401 - the import itself is the check
        return
    except RuntimeError as err:
        if "torchvision::nms" not in str(err):
            raise
    lib = torch.library.Library("torchvision", "FRAGMENT")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    install._lib = lib  # keep the fragment alive
