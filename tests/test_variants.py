import dataclasses

import pytest

from bench.errors import VariantError
from bench.variants import PRESETS, Variant, create_variant, list_variants


def test_registry_lists_and_creates():
    assert {"reduced", "stpm", "mixed"} <= set(list_variants())
    assert list_variants("mixed*") == sorted(n for n in PRESETS if n.startswith("mixed"))
    v = create_variant("mixed", alpha=0.5)
    assert v.alpha == 0.5 and v.teacher2 == "efficientnet_b0" and v.layers2 == (3, 4)
    with pytest.raises(KeyError, match="unknown variant 'nope'"):
        create_variant("nope")


def test_paper_presets():
    assert PRESETS["reduced"].layers == (0, 1, 2, 3) and PRESETS["reduced"].pooling
    assert PRESETS["stpm"].student == "full" and not PRESETS["stpm"].pooling
    assert PRESETS["mixed"].layers == (0, 1, 2) and PRESETS["mixed"].student2 == "conv"
    assert PRESETS["mixed-official"].student2 == "copy" and PRESETS["mixed-official"].fusion == "l2rows"


def test_keys_are_stable_and_eval_only_fields_share_training():
    a = create_variant("mixed")
    assert a.key == create_variant("mixed").key and len(a.key) == 10
    b = dataclasses.replace(a, score="max", fusion="l2rows")
    assert b.key != a.key and b.train_key == a.train_key
    c = dataclasses.replace(a, alpha=0.5)
    assert c.train_key != a.train_key


@pytest.mark.parametrize("bad", [dict(method="x"), dict(student="tiny"), dict(score="mean"),
                                 dict(fusion="avg"), dict(layers=()), dict(teacher2="efficientnet_b0"),
                                 dict(alpha=-1), dict(blur_sigma=-0.5), dict(image_size=0), dict(image_size=100),
                                 dict(teacher="nonexistent"), dict(layers=(1, 9)), dict(pooling="maybe"),
                                 dict(alpha="abc"), dict(teacher_init="scratch")])
def test_invalid_variants_are_refused(bad):
    with pytest.raises(ValueError):
        Variant(**{"method": "reduced", **bad})


def test_text_values_are_parsed_by_the_field_type():
    v = create_variant("reduced", pooling="no", alpha="0.5", layers="1+2", image_size="128", blur_sigma=0)
    assert v.pooling is False and v.alpha == 0.5 and v.layers == (1, 2) and v.image_size == 128
    assert v.blur_sigma == 0.0  # no blur, when asked for as 0
    assert create_variant("mixed", teacher2="none", layers2=(), method="reduced").teacher2 is None
    assert create_variant("reduced", pooling="yes").key == create_variant("reduced").key  # keys unchanged


def test_pool_stem_without_a_stem_level_is_the_same_variant_and_needs_pooling():
    assert create_variant("stpm", pool_stem=True, pooling=True).key == create_variant("stpm", pooling=True).key
    assert create_variant("reduced").key == create_variant("reduced", pool_stem=False).key   # earlier keys kept
    with pytest.raises(VariantError, match="pool_stem"):
        create_variant("reduced", pool_stem=True, pooling=False)
