import pytest
import torch

from bench.data import DataError, detect_layout, load_images, load_masks, load_split, train_val_indices
from conftest import make_mvtec_category, write_image, write_mask


def test_mvtec_layout_reads_every_category(tmp_path):
    for cat in ("carpet", "grid"):
        make_mvtec_category(tmp_path / "mvtec" / cat)
    layout, cats = detect_layout(tmp_path / "mvtec")
    assert (layout, cats) == ("mvtec", ["carpet", "grid"])
    split = load_split(tmp_path / "mvtec", "grid")
    assert (split.dataset, split.category, split.layout) == ("mvtec", "grid", "mvtec")
    assert len(split.train) == 3 and [s.label for s in split.test] == [1, 0]
    assert split.test[0].mask.name == "000_mask.png"


def test_btad_official_layout(tmp_path):
    # BTAD product 01: bmp images, png masks named like the image, ok/ko folders
    make_mvtec_category(tmp_path / "BTech" / "01", good_name="ok", defect="ko", ext=".bmp", mask_style="btad")
    make_mvtec_category(tmp_path / "BTech" / "02", good_name="ok", defect="ko", mask_style="btad")
    layout, cats = detect_layout(tmp_path / "BTech")
    assert (layout, cats) == ("btad", ["01", "02"])
    split = load_split(tmp_path / "BTech", "01")
    assert split.test[0].defect == "ko" and split.test[0].mask.name == "000.png"
    assert load_images(split.test, 16).shape == (2, 3, 16, 16)
    masks = load_masks(split.test, 32)
    assert masks[0].sum() == 64 and masks[1].sum() == 0


def test_single_folder_in_mvtec_layout(tmp_path):
    make_mvtec_category(tmp_path / "tiles")
    split = load_split(tmp_path / "tiles")
    assert (split.layout, split.category) == ("folder", "tiles")


def test_images_resized_and_masks_nearest(tmp_path):
    make_mvtec_category(tmp_path / "c")
    split = load_split(tmp_path / "c")
    imgs = load_images(split.train, 64)
    assert imgs.dtype == torch.uint8 and imgs.shape == (3, 3, 64, 64)
    masks = load_masks(split.test, 64)
    assert set(masks.unique().tolist()) <= {0, 1} and masks[0].sum() == 16 * 16


def test_grayscale_images_become_rgb(tmp_path):
    write_image(tmp_path / "g" / "train" / "good" / "0.png", mode="L", value=None)
    assert load_images(load_split_train(tmp_path / "g"), 8).shape == (1, 3, 8, 8)


def load_split_train(folder):
    from bench.data import Sample
    return [Sample(p, 0, "good") for p in sorted((folder / "train" / "good").iterdir())]


def test_missing_mask_names_the_image(tmp_path):
    base = make_mvtec_category(tmp_path / "c")
    (base / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"test/crack/000\.png.*without a ground-truth mask"):
        load_split(base)


def test_mask_of_wrong_size_names_the_mask(tmp_path):
    base = make_mvtec_category(tmp_path / "c")
    write_mask(base / "ground_truth" / "crack" / "000_mask.png", size=(20, 20))
    split = load_split(base)
    with pytest.raises(DataError, match=r"000_mask\.png: mask of the wrong size 20x20.*32x32"):
        load_masks(split.test, 16)


def test_corrupt_image_names_the_file(tmp_path):
    base = make_mvtec_category(tmp_path / "c")
    bad = base / "train" / "good" / "001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    split = load_split(base)
    with pytest.raises(DataError, match=r"001\.png: corrupt or unreadable image"):
        load_images(split.train, 16)


def test_empty_train_folder(tmp_path):
    base = make_mvtec_category(tmp_path / "c")
    for p in (base / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"train/good: empty train folder"):
        load_split(base)


def test_unknown_category_lists_the_known(tmp_path):
    make_mvtec_category(tmp_path / "m" / "wood")
    with pytest.raises(DataError, match=r"unknown category 'tile'.*\['wood'\]"):
        load_split(tmp_path / "m", "tile")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_split(tmp_path / "nowhere")


def test_empty_test_split(tmp_path):
    base = make_mvtec_category(tmp_path / "c")
    for p in (base / "test").rglob("*.png"):
        p.unlink()
    with pytest.raises(DataError, match="empty test split"):
        load_split(base)


def test_validation_split_is_seeded_and_disjoint():
    tr, va = train_val_indices(50, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and sorted(tr + va) == list(range(50))
    assert train_val_indices(50, seed=3) == (tr, va) and train_val_indices(50, seed=4) != (tr, va)


def test_16bit_images_keep_their_range(tmp_path):
    # a 16-bit grey gradient (mode I;16, as industrial cameras write): Pillow's convert("RGB") would
    # saturate everything above 255, i.e. 99.6 % of this image
    import numpy as np
    from PIL import Image

    from bench.data import Sample
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (16, 1))
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")
    img = load_images([Sample(path, 0, "good")], 64)[0, 0, 0].numpy().astype(int)
    assert img[0] == 0 and img[-1] == 255 and (img == 255).mean() < 0.05
    assert abs(img[32] - 130) <= 3 and (np.diff(img) >= 0).all()  # linear, monotone


def test_masks_saved_as_0_and_1_are_binary(tmp_path):
    import numpy as np
    from PIL import Image
    base = make_mvtec_category(tmp_path / "c")
    arr = np.zeros((32, 32), np.uint8)
    arr[8:16, 8:16] = 1  # a common export: class indices, not 0/255
    Image.fromarray(arr).save(base / "ground_truth" / "crack" / "000_mask.png")
    masks = load_masks(load_split(base).test, 32)
    assert masks[0].sum() == 64 and masks[1].sum() == 0


def test_16bit_masks_are_binary(tmp_path):
    import numpy as np
    from PIL import Image
    base = make_mvtec_category(tmp_path / "c")
    arr = np.zeros((32, 32), np.uint16)
    arr[8:16, 8:16] = 65535
    Image.fromarray(arr).save(base / "ground_truth" / "crack" / "000_mask.png")
    assert load_masks(load_split(base).test, 32)[0].sum() == 64
