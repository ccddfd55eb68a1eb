"""vision/doom_objects.py with the real engine: a tiny set loads, its splits hold the shortcut rates the
generator declares, the shifted test changes exactly the background, and a seed fixes every byte."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eval.shift import TEXTURE_CONTRAST, TEXTURE_SEED
from vision.doom_objects import BACKGROUNDS, Args, GeneratorError, check_args, generate, main, plan, split_sizes
from vision.folder import ImageMaskFolder, read_metadata, splits_of

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("DoomImp", "Zombieman", "ShotgunGuy", "ChaingunGuy", "Demon", "LostSoul")
PER_CLASS = 8
LUMA = np.array([0.299, 0.587, 0.114])
NOISE = TEXTURE_CONTRAST * np.random.default_rng(TEXTURE_SEED).standard_normal((64, 64))


def tiny_args(out, seed=0, **overrides):
    return Args(out=str(out), images_per_class=PER_CLASS, seed=seed, classes=CLASSES, progress=False,
                **overrides)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("doom_objects") / "data"
    generate(tiny_args(out))
    return out


def folder_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_loads_with_non_empty_masks_inside_the_border(tiny):
    assert splits_of(tiny) == ["test_balanced", "test_shifted", "train", "val"]
    counts = {"train": 6 * 8, "val": 6 * 2, "test_balanced": 6 * 6, "test_shifted": 6 * 6}
    metadata = read_metadata(tiny)
    assert metadata["counts"] == counts
    for split, count in counts.items():
        folder = ImageMaskFolder(tiny, split)
        assert folder.classes == sorted(CLASSES) == metadata["classes"]
        images, masks, labels = folder.tensors(progress=False)
        assert images.shape == (count, 3, 64, 64) and masks.shape == (count, 64, 64)
        assert np.bincount(labels.numpy(), minlength=6).tolist() == [count // 6] * 6
        area = masks.float().mean(dim=(1, 2))
        assert bool((area >= 0.005).all()), f"{split}: a mask under 0.5% of the image"
        border = masks[:, 0].any(1) | masks[:, -1].any(1) | masks[:, :, 0].any(1) | masks[:, :, -1].any(1)
        assert not bool(border.any()), f"{split}: an object touches the border"


@pytest.mark.slow
def test_each_class_is_on_its_own_background_at_the_declared_rate(tiny):
    metadata = read_metadata(tiny)
    assert metadata["background_of_class"] == dict(zip(CLASSES, BACKGROUNDS))
    assert metadata["shortcut"] == 0.9 and metadata["seed"] == 0 and metadata["image_size"] == 64
    backgrounds = metadata["image_background"]
    for split, own in (("train", round(0.9 * 8)), ("val", 2)):
        paths = (tiny / "splits" / f"{split}.txt").read_text().split()
        for cls in CLASSES:
            of_class = [backgrounds[path] for path in paths if path.startswith(f"{cls}/")]
            assert of_class.count(metadata["background_of_class"][cls]) == own, (split, cls)
            assert set(of_class) <= set(BACKGROUNDS[:6])
        assert metadata["own_background_counts"][split] == {cls: own for cls in CLASSES}


@pytest.mark.slow
def test_test_balanced_covers_every_pair_once(tiny):
    backgrounds = read_metadata(tiny)["image_background"]
    paths = (tiny / "splits" / "test_balanced.txt").read_text().split()
    pairs = [(path.split("/")[0], backgrounds[path]) for path in paths]
    assert sorted(pairs) == sorted((cls, background) for cls in CLASSES for background in BACKGROUNDS[:6])


@pytest.mark.slow
def test_shifted_keeps_the_object_and_replaces_the_background(tiny):
    balanced = ImageMaskFolder(tiny, "test_balanced").tensors(progress=False)
    shifted = ImageMaskFolder(tiny, "test_shifted").tensors(progress=False)
    assert (balanced[1] == shifted[1]).all() and (balanced[2] == shifted[2]).all()
    for image, mask, moved in zip(balanced[0], balanced[1], shifted[0]):
        on, off = mask, ~mask
        assert (image[:, on] == moved[:, on]).all()
        assert (image[:, off] != moved[:, off]).any(0).float().mean() > 0.9
        assert (moved[0, off] == moved[1, off]).all() and (moved[1, off] == moved[2, off]).all()  # grey
        # the texture: eval/shift.py's noise around the mean ITU-R 601 luma of the image's background pixels
        pixels = image.permute(1, 2, 0).numpy()[off.numpy()]
        expected = np.clip(np.rint((pixels @ LUMA).mean() + NOISE[off.numpy()]), 0, 255)
        np.testing.assert_array_equal(moved[0, off].numpy(), expected)


@pytest.mark.slow
def test_a_seed_fixes_every_byte(tmp_path):
    small = dict(images_per_class=4, classes=("Cacodemon", "Medikit"), progress=False)
    generate(Args(out=str(tmp_path / "a"), seed=3, **small))
    generate(Args(out=str(tmp_path / "b"), seed=3, **small))
    generate(Args(out=str(tmp_path / "c"), seed=4, **small))
    a, b, c = (folder_bytes(tmp_path / name) for name in "abc")
    assert len(a) == 2 * (2 * 4 + 2 * 1 + 2 * 2 + 2 * 2) + 4 + 1  # images + masks, 4 splits, dataset.json
    assert a == b
    assert a.keys() == c.keys()
    differing = [name for name in a if name.startswith("images/") and a[name] != c[name]]
    assert len(differing) > 0.9 * sum(name.startswith("images/") for name in a)


@pytest.mark.parametrize("shortcut, images, own", [(0.9, 50, 45), (0.5, 5, 3), (1.0, 7, 7), (0.0, 6, 0)])
def test_the_plan_puts_exactly_the_declared_share_on_the_own_background(tmp_path, shortcut, images, own):
    args = Args(out=str(tmp_path), images_per_class=images, seed=0, shortcut=shortcut, classes=CLASSES[:4],
                val_per_class=images, test_per_class=5)
    planned = plan(args, np.random.default_rng(0))
    for split in ("train", "val"):
        for cls in range(4):
            backgrounds = [b for c, b in planned[split] if c == cls]
            assert len(backgrounds) == images and backgrounds.count(cls) == own
            assert set(backgrounds) <= set(range(4))
    assert split_sizes(args)["test_balanced"] == 8  # 5 rounded up to a multiple of the 4 classes
    assert sorted(planned["test_balanced"]) == sorted((c, b) for c in range(4) for b in range(4) for _ in range(2))


def test_bad_arguments_say_what_is_valid(tmp_path):
    cases = [
        (dict(images_per_class=0), "--images-per-class must be >= 1"),
        (dict(images_per_class=3), "--val-per-class defaults to --images-per-class // 4, which is 0"),
        (dict(shortcut=1.5), r"--shortcut must be in \[0, 1\]"),
        (dict(image_size=8), r"--image-size must be in \[16, 480\]"),
        (dict(classes=("DoomImp", "Cyberdemon")), "unknown class Cyberdemon; valid: DoomImp, Zombieman"),
        (dict(classes=("DoomImp", "DoomImp")), "--classes has repeats"),
        (dict(classes=("DoomImp",)), "--classes needs 2 to 10 classes"),
        (dict(seed=-1), "--seed must be >= 0"),
    ]
    for overrides, message in cases:
        args = tiny_args(tmp_path / "new")
        for key, value in overrides.items():
            setattr(args, key, value)
        with pytest.raises(GeneratorError, match=message):
            check_args(args)
    assert not (tmp_path / "new").exists()


def test_a_non_empty_out_is_refused_writing_nothing(tmp_path, capsys):
    (tmp_path / "kept.txt").write_text("x")
    with pytest.raises(SystemExit, match=r"^error: --out .* exists and is not an empty folder"):
        main(tiny_args(tmp_path))
    assert [path.name for path in tmp_path.iterdir()] == ["kept.txt"]


@pytest.mark.slow
def test_command_line_refuses_with_one_error_line(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    result = subprocess.run([sys.executable, str(ROOT / "vision" / "doom_objects.py"), "--out", str(tmp_path),
                             "--images-per-class", "8", "--seed", "0"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: --out {tmp_path} exists and is not an empty folder; "
                                                  f"give a new folder"]
    assert [path.name for path in tmp_path.iterdir()] == ["kept.txt"]


@pytest.mark.slow
def test_an_objects_mask_is_the_label_buffers_pixels_of_it_and_shrinks_by_coverage():
    """At the render's own size the mask is exactly the label buffer's pixels of the summoned object and the
    colours are the frame's there; shrunk, a pixel is the object's where the object covers half of it or more."""
    from vision import doom_objects

    game = doom_objects.start_game(doom_objects.OBJECT_MAP, "RES_160X120", seed=3, objects_info=True)
    try:
        doom_objects.restart(game)
        before = {thing.id for thing in game.get_state().objects}
        game.send_game_command("summon DoomImp 180")
        game.advance_action(2)
        state = game.get_state()
        (imp,) = [thing for thing in state.objects if thing.id not in before and thing.name == "DoomImp"]
        (value,) = [label.value for label in state.labels if label.object_id == imp.id]
        frame = doom_objects.centre_square(state.screen_buffer)
        labels = doom_objects.centre_square(state.labels_buffer)
    finally:
        game.close()
    exact = labels == value
    assert exact.sum() > 20
    colours, mask = doom_objects.shrink_object(frame, exact, frame.shape[0])
    assert np.array_equal(mask, exact) and np.array_equal(colours[mask], frame[exact])
    _, small = doom_objects.shrink_object(frame, exact, 60)
    coverage = exact.reshape(60, 2, 60, 2).mean(axis=(1, 3))
    assert np.array_equal(small, coverage >= 0.5)
