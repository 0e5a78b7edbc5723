"""Real weights and real data from ../shared: skipped where it is absent, mandatory in CI."""
import pytest
import torch

from bench.backbones import Teacher
from bench.data import load_masks, load_split
from conftest import B0_PROXY, LITE0

pytestmark = pytest.mark.shared


def test_lite0_genuine_weights_load_and_are_labelled(shared):
    t = Teacher("tf_efficientnet_lite0", (0, 1, 2, 3), weights={"tf_efficientnet_lite0": str(LITE0)})
    assert t.source.label == "EfficientNet-Lite0 ImageNet-1k (genuine)"
    assert t.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # Lite0's own normalisation
    # trained batch-norm statistics, not the 0/1 of a fresh model
    bn = t.trunk.stages[0][1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_b0_proxy_loads_and_is_labelled_as_proxy(shared):
    t = Teacher("efficientnet_b0", (3, 4), weights={"efficientnet_b0": str(B0_PROXY)})
    assert "proxy" in t.source.label
    assert [f.shape[1] for f in t(torch.rand(1, 3, 256, 256))] == [112, 320]


@pytest.mark.parametrize("name,train,good,defective,classes", [
    ("kolektorsdd", 834, 210, 52, {"defect"}),
    ("magnetic_tile", 761, 191, 392, {"blowhole", "break", "crack", "fray", "uneven"}),
])
def test_real_datasets_read_with_all_defect_classes(shared, name, train, good, defective, classes):
    split = load_split(shared / "data" / name)
    assert split.layout == "folder" and len(split.train) == train
    assert sum(s.label == 0 for s in split.test) == good
    assert sum(s.label for s in split.test) == defective
    assert {s.defect for s in split.test if s.label} == classes
    defective_masks = load_masks([s for s in split.test if s.label][:5], 256)
    assert all(m.any() for m in defective_masks)
