import dataclasses

import pytest
import torch

from bench.build import build_detector
from bench.train import RECIPES, TrainingDiverged, fit, get_recipe
from bench.variants import create_variant

TINY = dict(teacher_init="random", image_size=64)


def tiny_fit(seed=0, cache=True, recipe="quick", epochs=2):
    torch.manual_seed(seed)
    det = build_detector(create_variant("reduced", **TINY))
    imgs = torch.randint(0, 255, (10, 3, 64, 64), dtype=torch.uint8)
    return fit(det, imgs[:8], imgs[8:], get_recipe(recipe), epochs, seed, cache_teacher=cache, progress=False)


def test_training_is_seeded_and_repeatable():
    a, b = tiny_fit(0), tiny_fit(0)
    assert a.train_loss == b.train_loss and a.val_loss == b.val_loss
    assert tiny_fit(1).train_loss != a.train_loss


def test_cached_teacher_features_match_on_the_fly():
    a, b = tiny_fit(cache=True), tiny_fit(cache=False)
    assert a.train_loss == pytest.approx(b.train_loss, rel=1e-2)  # cache holds half precision


def test_best_checkpoint_is_by_validation_loss():
    s = tiny_fit(epochs=3)
    assert s.best_val_loss == min(s.val_loss) and s.val_loss[s.best_epoch - 1] == s.best_val_loss


def test_nan_loss_stops_with_a_clear_error(monkeypatch):
    monkeypatch.setitem(RECIPES, "boom", dataclasses.replace(RECIPES["quick"], name="boom", lr=1e30))
    with pytest.raises(TrainingDiverged, match=r"loss became (nan|inf).*recipe boom"):
        tiny_fit(recipe="boom", epochs=3)


def test_recipes():
    assert get_recipe("paper").epochs_for("mixed") == 200 and get_recipe("paper").epochs_for("reduced") == 100
    assert get_recipe("paper").lr == 0.4 and get_recipe("paper").batch_size == 16
    assert get_recipe("official").onecycle_max_lr == 4e-3
    with pytest.raises(KeyError):
        get_recipe("fast")


def test_official_recipe_runs_onecycle_from_its_lr():
    s = tiny_fit(recipe="official", epochs=1)
    assert len(s.train_loss) == 1 and s.train_loss[0] > 0
