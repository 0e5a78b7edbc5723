"""Students, cut from the same staged trunks as their teachers.

- `full`    the STPM student: the teacher's architecture, random init.
- `reduced` §3.2 / Fig. 1: one block per stage (the first, which carries the stage's stride and
            channel change); with pooling, features after the stem layer come out at half the
            teacher's resolution (an extra 2x max-pool at the entry of the second stage; the official
            code strides layer1's first block instead, same output shape). Works for every family
            `backbones.family_of` knows, so "reduced" applies to EfficientNet teachers too.
- `conv`    the paper's EfficientNet student (§4.2): one 3x3 convolution (+BN+ReLU) per teacher stage.
- `copy`    the official code's EfficientNet student: the teacher itself, trainable, starting from
            the teacher's weights.

Channel counts always equal the teacher's: Eq. 2 compares normalised vectors position by position,
so the c_l/2 of §3.2's shape statement cannot hold for the compared features.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.backbones import Teacher, Trunk, cut_stages, family_of, timm
from bench.max_pool import MaxPool2d

STUDENT_KINDS = ("full", "reduced", "conv", "copy")


def _one_block_per_stage(model: nn.Module) -> nn.Module:
    if family_of(model) == "resnet":
        for i in (1, 2, 3, 4):
            setattr(model, f"layer{i}", getattr(model, f"layer{i}")[:1])
    else:
        model.blocks = nn.Sequential(*[stage[:1] for stage in model.blocks])
    return model


def _stage_shapes(teacher: Teacher) -> list[tuple[int, int]]:
    """(channels, stride relative to the previous stage) for each stage of the teacher's trunk."""
    x = torch.zeros(1, 3, 64, 64)
    shapes, size = [], x.shape[-1]
    with torch.no_grad():
        for stage in teacher.trunk.stages:
            x = stage(x)
            shapes.append((x.shape[1], size // x.shape[-1]))
            size = x.shape[-1]
    return shapes


def _conv_stages(teacher: Teacher) -> list[tuple[str, nn.Module]]:
    stages, c_in = [], 3
    for name, (c_out, stride) in zip(teacher.trunk.names, _stage_shapes(teacher)):
        stages.append((name, nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))))
        c_in = c_out
    return stages


def build_student(kind: str, teacher: Teacher, pooling: bool, pool_stem: bool = False) -> Trunk:
    if kind == "copy":
        student = copy.deepcopy(teacher.trunk)
        for p in student.parameters():
            p.requires_grad_(True)
        stages = list(zip(student.names, student.stages))
    elif kind == "conv":
        stages = _conv_stages(teacher)
    elif kind in ("full", "reduced"):
        model = timm.create_model(teacher.backbone, pretrained=False)
        if kind == "reduced":
            model = _one_block_per_stage(model)
        stages = cut_stages(model)
    else:
        raise ValueError(f"unknown student {kind!r}; choose one of {STUDENT_KINDS}")
    if pooling:
        stages = half_resolution(stages, pool_stem)
    return Trunk(stages, teacher.layer_names).train()


# Eq. 1, both sides in one place: with pooling, the student works at half the teacher's resolution
# after the stem layer (from the stem on, with pool_stem), and the teacher's features there are
# average-pooled to meet it.
def half_resolution(stages: list[tuple[str, nn.Module]], pool_stem: bool = False) -> list[tuple[str, nn.Module]]:
    """The student's side: a 2x max-pool at the entry of the second stage (the official code strides
    layer1's first block instead: same output shape), or at the stem's exit when the stem is pooled too."""
    out = list(stages)
    at = 0 if pool_stem else 1
    name, module = out[at]
    out[at] = (name, nn.Sequential(module, MaxPool2d(2)) if pool_stem else nn.Sequential(MaxPool2d(2), module))
    return out


def pool_teacher_features(fts: list[torch.Tensor], names: list[str], stem: str,
                          pool_stem: bool = False) -> list[torch.Tensor]:
    """The teacher's side (Eq. 1, AAP): every layer but the stride-2 stem (unless POOL_STEM),
    adaptive-average-pooled to half its size, rounded up."""
    return [f if name == stem and not pool_stem else
            F.adaptive_avg_pool2d(f, (math.ceil(f.shape[-2] / 2), math.ceil(f.shape[-1] / 2)))
            for name, f in zip(names, fts)]
