"""vision/folder.py: the image-and-mask folder round trip, resizing, and each refusal naming its file."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vision.folder import (FolderError, ImageMaskFolder, read_metadata, splits_of, write_sample,
                           write_split)

CLASSES = ["zebra", "ant", "Mole"]  # sorted: Mole, ant, zebra


def random_sample(rng, height=20, width=24):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.random((height, width)) < 0.3
    return image, mask


def build(root, per_class=3, height=20, width=24, seed=0):
    """A folder with every class in 'train' and the first image of each in 'val'; returns {rel path: sample}."""
    rng = np.random.default_rng(seed)
    written = {}
    for cls in CLASSES:
        for index in range(per_class):
            image, mask = random_sample(rng, height, width)
            written[write_sample(root, cls, f"img{index}", image, mask)] = (image, mask, cls)
    write_split(root, "train", list(written))
    write_split(root, "val", [path for path in written if path.endswith("img0.png")])
    return written


def test_round_trip_is_exact_and_classes_sorted(tmp_path):
    written = build(tmp_path)
    folder = ImageMaskFolder(tmp_path, "train")
    assert folder.classes == sorted(CLASSES) == ["Mole", "ant", "zebra"]
    assert folder.root == tmp_path and folder.split == "train" and len(folder) == len(written) == 9
    for index, (relative, (image, mask, cls)) in enumerate(written.items()):
        image_path, mask_path, label = folder.samples[index]
        assert image_path == tmp_path / "images" / relative
        assert mask_path == tmp_path / "masks" / relative
        got_image, got_mask, got_label = folder[index]
        assert got_image.dtype == torch.float32 and got_image.shape == (3, 20, 24)
        assert got_mask.dtype == torch.float32 and set(got_mask.unique().tolist()) <= {0.0, 1.0}
        np.testing.assert_array_equal((got_image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), image)
        np.testing.assert_array_equal(got_mask.numpy().astype(bool), mask)
        assert got_label == folder.classes.index(cls)
    assert splits_of(tmp_path) == ["train", "val"]
    assert len(ImageMaskFolder(tmp_path, "val")) == 3


def test_resize_gives_the_requested_size(tmp_path):
    build(tmp_path, height=20, width=24)
    full = np.ones((20, 24), bool)
    write_sample(tmp_path, "ant", "full", np.full((20, 24, 3), 200, np.uint8), full)
    write_split(tmp_path, "full", ["ant/full.png"])
    folder = ImageMaskFolder(tmp_path, "train", image_size=16)
    image, mask, _ = folder[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    image, mask, _ = ImageMaskFolder(tmp_path, "full", image_size=40)[0]  # upscaling too
    assert image.shape == (3, 40, 40) and bool((mask == 1).all())
    assert torch.allclose(image, torch.full_like(image, 200 / 255))


def test_nearest_mask_resize_keeps_a_block(tmp_path):
    """A mask that is the left half stays exactly the left half at half the size."""
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    write_sample(tmp_path, "a", "half", np.zeros((32, 32, 3), np.uint8), mask)
    write_split(tmp_path, "s", ["a/half.png"])
    _, small, _ = ImageMaskFolder(tmp_path, "s", image_size=16)[0]
    expected = np.zeros((16, 16), np.float32)
    expected[:, :8] = 1
    np.testing.assert_array_equal(small.numpy(), expected)


def test_tensors_equal_stacking_getitem(tmp_path):
    build(tmp_path)
    for size in (None, 12):
        folder = ImageMaskFolder(tmp_path, "train", image_size=size)
        images, masks, labels = folder.tensors(progress=False)
        side = (20, 24) if size is None else (12, 12)
        assert images.dtype == torch.uint8 and images.shape == (9, 3, *side)
        assert masks.dtype == torch.bool and masks.shape == (9, *side)
        assert labels.dtype == torch.int64 and labels.shape == (9,)
        items = [folder[index] for index in range(len(folder))]
        assert torch.equal(images.float() / 255, torch.stack([item[0] for item in items]))
        assert torch.equal(masks.float(), torch.stack([item[1] for item in items]))
        assert labels.tolist() == [item[2] for item in items]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_become_rgb(tmp_path, mode):
    grey = np.arange(20 * 24, dtype=np.uint8).reshape(20, 24)
    picture = Image.fromarray(grey)
    picture = picture.convert(mode) if mode != "P" else picture.convert("P")
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "masks" / "a").mkdir(parents=True)
    picture.save(tmp_path / "images" / "a" / "x.png")
    Image.fromarray(np.full((20, 24), 255, np.uint8)).save(tmp_path / "masks" / "a" / "x.png")
    write_split(tmp_path, "s", ["a/x.png"])
    image, mask, _ = ImageMaskFolder(tmp_path, "s")[0]
    assert image.shape == (3, 20, 24) and bool((mask == 1).all())
    expected = np.asarray(picture.convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal((image * 255).round().to(torch.uint8).numpy(), expected)


def test_an_alpha_band_is_not_object(tmp_path):
    """An RGBA mask, opaque everywhere: only its colour decides."""
    write_sample(tmp_path, "a", "x", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), bool))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 2] = 7
    Image.fromarray(rgba).save(tmp_path / "masks" / "a" / "x.png")
    write_split(tmp_path, "s", ["a/x.png"])
    _, mask, _ = ImageMaskFolder(tmp_path, "s")[0]
    assert mask.sum() == 1 and mask[0, 0] == 1


def test_metadata(tmp_path):
    build(tmp_path)
    assert read_metadata(tmp_path) == {}
    (tmp_path / "dataset.json").write_text(json.dumps({"classes": CLASSES, "seed": 3}))
    assert read_metadata(tmp_path) == {"classes": CLASSES, "seed": 3}
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(FolderError, match="dataset.json: not valid JSON"):
        read_metadata(tmp_path)


def expect_error(match, root, split="train", image_size=None):
    with pytest.raises(FolderError, match=match) as caught:
        ImageMaskFolder(root, split, image_size)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_missing_root_and_images(tmp_path):
    expect_error("nope: no such folder", tmp_path / "nope")
    with pytest.raises(FolderError, match="nope: no such folder"):
        splits_of(tmp_path / "nope")
    build(tmp_path)
    (tmp_path / "images").rename(tmp_path / "elsewhere")
    expect_error(r"images: missing \(expected images/<class>/<name>.png\)", tmp_path)


def test_unknown_split_lists_the_valid_ones(tmp_path):
    build(tmp_path)
    expect_error("no split 'test'; valid: train, val", tmp_path, "test")
    (tmp_path / "splits" / "train.txt").unlink()
    (tmp_path / "splits" / "val.txt").unlink()
    expect_error("splits: no split files", tmp_path)


def test_split_lines_naming_missing_images_or_classes(tmp_path):
    build(tmp_path)
    write_split(tmp_path, "train", ["ant/img0.png", "ant/ghost.png"])
    message = expect_error(r"train.txt:2: names ant/ghost.png, but .*images/ant/ghost.png does not exist", tmp_path)
    assert str(tmp_path) in message
    write_split(tmp_path, "train", ["bee/img0.png"])
    expect_error(r"train.txt:1: class 'bee' is not a folder under .*; classes: Mole, ant, zebra", tmp_path)
    write_split(tmp_path, "train", ["ant/sub/img0.png"])
    expect_error(r"train.txt:1: 'ant/sub/img0.png' is not a path '<class>/<name>.png'", tmp_path)


def test_missing_mask(tmp_path):
    build(tmp_path)
    (tmp_path / "masks" / "ant" / "img1.png").unlink()
    expect_error(r"masks/ant/img1.png: missing mask of .*images/ant/img1.png", tmp_path)


def test_mask_of_another_size_names_both_sizes(tmp_path):
    build(tmp_path)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "masks" / "zebra" / "img2.png")
    expect_error(r"masks/zebra/img2.png: mask is 12x10, but its image .*images/zebra/img2.png is 24x20", tmp_path)


def test_images_of_different_sizes_need_an_image_size(tmp_path):
    build(tmp_path)
    image, mask = random_sample(np.random.default_rng(1), 30, 30)
    write_sample(tmp_path, "ant", "big", image, mask)
    write_split(tmp_path, "mixed", ["ant/img0.png", "ant/big.png"])
    expect_error(r"images/ant/big.png: 30x30, but .*img0.png is 24x20", tmp_path, "mixed")
    assert ImageMaskFolder(tmp_path, "mixed", image_size=16).tensors(progress=False)[0].shape == (2, 3, 16, 16)


def test_empty_class_and_empty_split(tmp_path):
    build(tmp_path)
    (tmp_path / "images" / "bee").mkdir()
    expect_error(r"images/bee: empty class", tmp_path)
    (tmp_path / "images" / "bee").rmdir()
    (tmp_path / "splits" / "none.txt").write_text("\n\n")
    expect_error(r"splits/none.txt: empty split", tmp_path, "none")


def test_corrupt_files_are_named(tmp_path):
    build(tmp_path)
    (tmp_path / "images" / "ant" / "img1.png").write_bytes(b"not an image at all")
    expect_error(r"images/ant/img1.png: unreadable image", tmp_path)
    build(tmp_path)
    # a truncated PNG: its header reads, so the folder builds, and decoding it fails
    path = tmp_path / "masks" / "Mole" / "img2.png"
    path.write_bytes(path.read_bytes()[:60])
    folder = ImageMaskFolder(tmp_path, "train")
    index = [sample[1] for sample in folder.samples].index(path)
    with pytest.raises(FolderError, match=r"masks/Mole/img2.png: unreadable or corrupt image"):
        folder[index]
    with pytest.raises(FolderError, match=r"masks/Mole/img2.png: unreadable or corrupt image"):
        folder.tensors(progress=False)


def test_writer_refuses_bad_arrays(tmp_path):
    image, mask = random_sample(np.random.default_rng(0))
    with pytest.raises(ValueError, match="image must be uint8 of shape"):
        write_sample(tmp_path, "a", "x", image.astype(np.float32), mask)
    with pytest.raises(ValueError, match=r"mask must be bool of shape \(20, 24\)"):
        write_sample(tmp_path, "a", "x", image, mask[:10])
    with pytest.raises(ValueError, match="class must be a non-empty file name"):
        write_sample(tmp_path, "a/b", "x", image, mask)
    with pytest.raises(ValueError, match="needs at least one image path"):
        write_split(tmp_path, "train", [])
    assert not (tmp_path / "images").exists()
