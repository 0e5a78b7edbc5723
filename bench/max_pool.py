"""Max pooling that CPU inference does not pay twice for.

On CPU, `F.max_pool2d` on an NCHW tensor runs PyTorch's kernel that also records indices, even
without autograd: for ResNet's stem pool (3x3, stride 2, padding 1) at 1 x 64 x 128^2 it takes 3.1 ms
on 2 cores, where the same maximum taken as element-wise maxima of strided slices (rows, then
columns) takes 0.21 ms; for the 2x2 pool of Eq. 1 at 1 x 64 x 64^2, 0.52 ms against 0.03 ms. Every
KD detector here runs the stem pool twice per image (teacher and student), so the kernel was a
fifth of the reduced detector's time at batch 1 (profiled). The slices give the same values (a maximum is
exact; NaN propagates as in max_pool2d), so only the speed changes.

Only where it applies: CPU, NCHW-contiguous, no autograd (the index kernel's gradient goes to one
maximum; torch.maximum would split it on ties), not while traced or compiled (an export keeps its
MaxPool op), even height and width, and the two shapes the networks here use. Otherwise the
ordinary module runs."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair


def _max_2x2s2(x: torch.Tensor) -> torch.Tensor:
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _max_3x3s2(x: torch.Tensor) -> torch.Tensor:
    # output i covers inputs 2i-1, 2i, 2i+1 along each axis (2i-1 is padding for i = 0)
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    torch.maximum(rows[..., 1:, :], x[..., 1:-1:2, :], out=rows[..., 1:, :])
    out = torch.maximum(rows[..., 0::2], rows[..., 1::2])
    torch.maximum(out[..., 1:], rows[..., 1:-1:2], out=out[..., 1:])
    return out


# (kernel, stride, padding) -> the same pool as slice maxima
_SLICED = {((3, 3), (2, 2), (1, 1)): _max_3x3s2, ((2, 2), (2, 2), (0, 0)): _max_2x2s2}


class MaxPool2d(nn.MaxPool2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        plain = not (self.return_indices or self.ceil_mode) and tuple(_pair(self.dilation)) == (1, 1)
        shape = tuple(tuple(_pair(v)) for v in (self.kernel_size, self.stride, self.padding))
        self._sliced = _SLICED.get(shape) if plain else None

    @classmethod
    def like(cls, pool: nn.MaxPool2d) -> nn.Module:
        """POOL as this class, same arguments; a module of another kind (anti-aliased pools) as it is."""
        if type(pool) is not nn.MaxPool2d:
            return pool
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self._sliced is not None and not torch.is_grad_enabled() and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling() and not torch.onnx.is_in_onnx_export()
                # (shapes tested last: a traced shape test would warn)
                and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()
                and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0 and x.shape[-1] > 2 and x.shape[-2] > 2):
            return self._sliced(x)
        return super().forward(x)
