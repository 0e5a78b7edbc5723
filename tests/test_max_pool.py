import pytest
import torch
import torch.nn.functional as F

from bench.build import build_detector
from bench.max_pool import MaxPool2d
from bench.variants import create_variant

SHAPES = [(3, 2, 1), (2, 2, 0)]   # (kernel, stride, padding): ResNet's stem pool and Eq. 1's pool


def _inputs(batch, size=16):
    x = torch.randn(batch, 4, size, size).relu()   # after a ReLU: many tied zeros
    x[0, 0, 0, 0] = float("nan")
    x[-1, 1, -1, -1] = float("inf")
    x[-1, 2] = -float("inf")                        # a plane where every window's maximum is -inf
    return x


@pytest.mark.parametrize("kernel,stride,padding", SHAPES)
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_path_is_max_pool2d_exactly_and_calls_no_pooling_kernel(monkeypatch, kernel, stride, padding, batch):
    x = _inputs(batch)
    ref = F.max_pool2d(x, kernel, stride, padding)
    pool = MaxPool2d(kernel, stride, padding)

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path fell back to F.max_pool2d")
    monkeypatch.setattr(F, "max_pool2d", refuse)
    with torch.inference_mode():
        out = pool(x)
    with torch.no_grad():
        out_no_grad = pool(x)
    for got in (out, out_no_grad):
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("kernel,stride,padding", SHAPES)
def test_where_the_fast_path_does_not_apply_the_module_is_max_pool2d(kernel, stride, padding):
    pool = MaxPool2d(kernel, stride, padding)
    odd = torch.randn(2, 4, 15, 15)
    channels_last = torch.randn(2, 4, 16, 16).contiguous(memory_format=torch.channels_last)
    for x in (odd, channels_last):
        with torch.no_grad():
            torch.testing.assert_close(pool(x), F.max_pool2d(x, kernel, stride, padding), rtol=0, atol=0)
    # with autograd the gradient goes to one maximum per window, as max_pool2d's
    x = torch.randn(2, 4, 16, 16).relu().requires_grad_()
    pool(x).sum().backward()
    grad, x.grad = x.grad.clone(), None
    F.max_pool2d(x, kernel, stride, padding).sum().backward()
    assert torch.equal(grad, x.grad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace: what the ONNX exporter uses
def test_traced_export_keeps_a_max_pool_op():
    pool = MaxPool2d(3, 2, 1).eval()
    with torch.no_grad():
        graph = torch.jit.trace(pool, torch.randn(1, 4, 16, 16)).graph
    assert any("max_pool2d" in node.kind() for node in graph.nodes())


@pytest.mark.parametrize("preset", ["reduced", "stpm", "mixed"])
def test_every_max_pool_of_a_detector_is_the_sliced_one(preset):
    det = build_detector(create_variant(preset, teacher_init="random", teacher2_init="random"))
    pools = [m for m in det.modules() if isinstance(m, torch.nn.MaxPool2d)]
    assert pools and all(type(m) is MaxPool2d for m in pools)
