import dataclasses

import pytest
import torch

from bench.build import build_detector
from bench.train import RECIPES, TrainingDiverged, fit, get_recipe, reduce_batch
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


@pytest.mark.parametrize("recipe", [n for n, r in RECIPES.items() if r.optimizer == "sgd" and r.loss_reduction == "sum"])
def test_default_sgd_recipes_step_on_the_batch_sum_as_stpm(recipe):
    """A batch of two, one scalar parameter, loss per image (w - a_i)^2: the gradient STPM's code
    (and anomalib, and the official MixedTeacher code) steps on is the sum 2(w-a_1) + 2(w-a_2)."""
    w = torch.tensor(1.0, requires_grad=True)
    a = torch.tensor([0.0, 3.0])
    reduce_batch((w - a) ** 2, get_recipe(recipe).loss_reduction).backward()
    assert w.grad.item() == pytest.approx(2 * (1 - 0) + 2 * (1 - 3))   # = -2; the batch mean gives -1


def test_batch_mean_is_a_named_reading_with_its_own_records():
    for name in ("quick", "paper", "demo"):
        mean = get_recipe(f"{name}-mean")
        assert mean.loss_reduction == "mean"
        assert dataclasses.replace(mean, name=name, loss_reduction="sum") == get_recipe(name)
    assert "official-mean" not in RECIPES          # Adam is scale-invariant: no second reading
    with pytest.raises(ValueError, match="loss reduction"):
        reduce_batch(torch.ones(2), "median")


def test_sum_steps_batch_size_times_further_than_mean():
    """One SGD step from the same start: the sum's update is the mean's times the batch size."""
    def first_step(recipe):
        torch.manual_seed(0)
        det = build_detector(create_variant("reduced", **TINY))
        before = [p.detach().clone() for p in det.student_parameters()]
        imgs = torch.randint(0, 255, (10, 3, 64, 64), dtype=torch.uint8)
        one = dataclasses.replace(get_recipe(recipe), momentum=0.0, weight_decay=0.0, batch_size=8)
        fit(det, imgs[:8], imgs[8:], one, 1, 0, progress=False)
        return torch.cat([(p.detach() - b).flatten() for p, b in zip(det.student_parameters(), before)])
    summed, mean = first_step("quick"), first_step("quick-mean")
    assert torch.allclose(summed, 8 * mean, rtol=1e-3, atol=1e-6)
