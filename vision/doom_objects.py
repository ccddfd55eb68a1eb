"""Doom objects on Doom backgrounds: a shortcut image set with exact masks, rendered by the ViZDoom engine.

    python vision/doom_objects.py --out data/doom_objects --images-per-class 1000 --seed 0

Built the way Waterbirds is built: an object (a monster or item, the class) is cut out of an engine frame with
the label buffer and pasted onto a frame of another map (the background). Each class has "its" map; in train and
val a class is on its own map for --shortcut * n of its n images (default 0.9, rounded) and on one of the other
maps, drawn uniformly, for the rest, so a classifier can score well by recognising the map. test_balanced puts
every class on every map equally often; test_shifted is test_balanced with every background pixel replaced by a
fixed grey noise texture of the image's mean background brightness (eval/shift.py's texture, its seed and
contrast), object pixels unchanged. Writes vision/folder.py's folder format with dataset.json.

Objects: each is summoned (``summon CLASS ANGLE``, a cheat) in the open arena of defend_the_center with monsters
frozen (``freeze``), facing a random way; the player then steps back a random distance and turns a random
angle, so objects vary in size, pose and position. Its mask is the label buffer's pixels of that object. Samples
whose mask covers less than --min-object-fraction of the image or touches its border are drawn again.
Backgrounds: a random walk (turn, walk, look around) through each map with monsters frozen, keeping the views
whose label buffer holds no object pixel and that look into the room rather than at a wall close by.
Every frame is the centre square of the engine's 4:3 frame, shrunk to --image-size by area averaging (a box
filter); the object is shrunk with its coverage (premultiplied), its mask is the pixels it covers by half or
more, so every mask pixel shows the object only and every other pixel the background only.

Deterministic: the same arguments give the same bytes (every random draw comes from --seed, and so do the
engine seeds).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tyro
import vizdoom as vzd
from PIL import Image
from tqdm import tqdm

from eval.shift import TEXTURE_CONTRAST, TEXTURE_SEED
from vision.folder import METADATA_FILE, write_sample, write_split

GENERATOR_VERSION = 1
CLASSES = ("DoomImp", "Zombieman", "ShotgunGuy", "ChaingunGuy", "Demon", "LostSoul", "Cacodemon", "Medikit")
# Actor classes seen to render whole in the arena of defend_the_center (Freedoom sprites)
SUMMONABLE = CLASSES + ("HellKnight", "BaronOfHell", "Revenant", "Arachnotron", "Fatso", "PainElemental",
                        "WolfensteinSS")
# Stock maps, in the order classes get them; the first eight look clearly apart (docs/vision.md)
BACKGROUNDS = ("basic", "defend_the_center", "health_gathering", "my_way_home", "deadly_corridor",
               "defend_the_line", "predict_position", "rocket_basic", "take_cover", "health_gathering_supreme")
OBJECT_MAP = "defend_the_center"
SPLITS = ("train", "val", "test_balanced", "test_shifted")
# (side of the frame's centre square, engine resolution): the smallest whose square holds --image-size is used
RESOLUTIONS = ((120, "RES_160X120"), (240, "RES_320X240"), (480, "RES_640X480"))
MIN_IMAGE_SIZE = 16

MAX_STEP_BACK = 200
"""map units the player steps back from a summoned object, at most (summoned ~50-150 units ahead)"""
MAX_TURN = 20.0
"""degrees the player turns away from a summoned object, at most (the square shows about +-37 degrees)"""
WALK_SPEED = 50.0
MAX_WALK_TICS = 20
WALK_STEPS_PER_EPISODE = 100
"""a background walk starts a new episode after this many steps: some maps' scripts keep spawning objects (e.g.
health_gathering's medikits, which freeze does not stop), so object-free views get rarer as an episode ages"""
MIN_VIEW_DEPTH = 10
"""depth-buffer value a background view's central band must reach (median): not a wall close by"""
MAX_TRIES = 400
"""object draws, or background looks, in a row without an accepted one before the generator gives up"""
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as PIL's "L"


class GeneratorError(ValueError):
    """Bad arguments; the message says what is valid."""


@dataclass
class Args:
    out: str
    """output folder (created; refused if it exists and is not empty)"""
    images_per_class: int
    """train images per class (N); val and each test split get N//4 per class unless told otherwise"""
    seed: int
    """seed of every random draw and of the engine: the same seed gives the same files"""
    image_size: int = 64
    """side of the square images, in pixels (16-480)"""
    shortcut: float = 0.9
    """share of each class's train and val images on the class's own background (exactly p * n, rounded)"""
    classes: tuple[str, ...] = CLASSES
    """object classes (ViZDoom actor names); class i gets background map i of BACKGROUNDS"""
    val_per_class: int | None = None
    """val images per class (None: images_per_class // 4)"""
    test_per_class: int | None = None
    """test_balanced (and test_shifted) images per class (None: images_per_class // 4), rounded up to a multiple
    of the number of classes so that every class is on every background equally often"""
    min_object_fraction: float = 0.005
    """smallest share of the image an object's mask may cover; smaller draws are redrawn"""
    progress: bool = True
    """show progress bars"""


def split_sizes(args: Args) -> dict[str, int]:
    """Images per class in each split."""
    val = args.images_per_class // 4 if args.val_per_class is None else args.val_per_class
    test = args.images_per_class // 4 if args.test_per_class is None else args.test_per_class
    classes = len(args.classes)
    test = classes * math.ceil(test / classes)
    return {"train": args.images_per_class, "val": val, "test_balanced": test, "test_shifted": test}


def check_args(args: Args) -> None:
    if args.images_per_class < 1:
        raise GeneratorError(f"--images-per-class must be >= 1, got {args.images_per_class}")
    for flag, value in (("--val-per-class", args.val_per_class), ("--test-per-class", args.test_per_class)):
        if value is None and args.images_per_class < 4:
            raise GeneratorError(f"{flag} defaults to --images-per-class // 4, which is 0 for "
                                 f"{args.images_per_class}: give {flag} >= 1 or --images-per-class >= 4")
        if value is not None and value < 1:
            raise GeneratorError(f"{flag} must be >= 1, got {value}")
    if args.seed < 0:
        raise GeneratorError(f"--seed must be >= 0, got {args.seed}")
    if not MIN_IMAGE_SIZE <= args.image_size <= RESOLUTIONS[-1][0]:
        raise GeneratorError(f"--image-size must be in [{MIN_IMAGE_SIZE}, {RESOLUTIONS[-1][0]}], got "
                             f"{args.image_size}")
    if not 0.0 <= args.shortcut <= 1.0:
        raise GeneratorError(f"--shortcut must be in [0, 1], got {args.shortcut}")
    if not 0.0 < args.min_object_fraction < 0.5:
        raise GeneratorError(f"--min-object-fraction must be in (0, 0.5), got {args.min_object_fraction}")
    unknown = [name for name in args.classes if name not in SUMMONABLE]
    if unknown:
        raise GeneratorError(f"unknown class {', '.join(unknown)}; valid: {', '.join(SUMMONABLE)}")
    if len(set(args.classes)) != len(args.classes):
        raise GeneratorError(f"--classes has repeats: {' '.join(args.classes)}")
    if not 2 <= len(args.classes) <= len(BACKGROUNDS):
        raise GeneratorError(f"--classes needs 2 to {len(BACKGROUNDS)} classes (one background map each), got "
                             f"{len(args.classes)}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise GeneratorError(f"--out {out} exists and is not an empty folder; give a new folder")
    existing = next(folder for folder in (out, *out.absolute().parents) if folder.exists())
    if not os.access(existing, os.W_OK):
        raise GeneratorError(f"--out {out}: cannot write in {existing}")


def own_count(shortcut: float, images: int) -> int:
    """Images of a class on its own background: shortcut * images, rounded half up."""
    return math.floor(shortcut * images + 0.5)


def plan(args: Args, rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """(class index, background index) of every image of every split, class by class."""
    classes = len(args.classes)
    sizes = split_sizes(args)
    planned = {}
    for split in ("train", "val"):
        planned[split] = []
        for cls in range(classes):
            own = own_count(args.shortcut, sizes[split])
            others = rng.choice([b for b in range(classes) if b != cls], size=sizes[split] - own)
            backgrounds = np.concatenate([np.full(own, cls), others]).astype(int)
            rng.shuffle(backgrounds)
            planned[split] += [(cls, int(b)) for b in backgrounds]
    per_pair = sizes["test_balanced"] // classes
    planned["test_balanced"] = [(cls, b) for cls in range(classes) for b in range(classes) for _ in range(per_pair)]
    return planned


def start_game(map_name: str, resolution: str, seed: int, objects_info: bool = False) -> vzd.DoomGame:
    """A hidden engine on a stock scenario's map: RGB frames, label and depth buffers, no HUD or weapon,
    cheats allowed, no time limit; buttons: turn by a given angle, move at a given speed."""
    game = vzd.DoomGame()
    game.load_config(os.path.join(vzd.scenarios_path, f"{map_name}.cfg"))
    game.set_window_visible(False)
    game.set_mode(vzd.Mode.PLAYER)
    game.set_screen_resolution(getattr(vzd.ScreenResolution, resolution))
    game.set_screen_format(vzd.ScreenFormat.RGB24)
    game.set_labels_buffer_enabled(True)
    game.set_depth_buffer_enabled(True)
    game.set_objects_info_enabled(objects_info)
    game.set_render_hud(False)
    game.set_render_weapon(False)
    game.set_render_crosshair(False)
    game.set_render_screen_flashes(False)
    game.set_render_messages(False)
    game.set_episode_timeout(0)
    game.set_available_buttons([vzd.Button.TURN_LEFT_RIGHT_DELTA, vzd.Button.MOVE_FORWARD_BACKWARD_DELTA])
    game.set_available_game_variables([vzd.GameVariable.POSITION_X, vzd.GameVariable.POSITION_Y,
                                       vzd.GameVariable.ANGLE])
    game.add_game_args("+sv_cheats 1")
    game.set_seed(seed)
    game.init()
    return game


def restart(game: vzd.DoomGame) -> None:
    """A new episode with monsters frozen and the player in god mode (both reset with each episode)."""
    game.new_episode()
    game.send_game_command("freeze")
    game.send_game_command("god")
    game.set_action([0.0, 0.0])
    game.advance_action(1)


def centre_square(frame: np.ndarray) -> np.ndarray:
    side = frame.shape[0]
    left = (frame.shape[1] - side) // 2
    return frame[:, left:left + side]


def shrink_image(frame: np.ndarray, size: int) -> np.ndarray:
    """(H,H,3) uint8 -> (size,size,3) by area averaging (PIL's box filter; unchanged when H = size)."""
    return np.array(Image.fromarray(frame).resize((size, size), Image.BOX))


def shrink_band(values: np.ndarray, size: int) -> np.ndarray:
    return np.array(Image.fromarray(values.astype(np.float32)).resize((size, size), Image.BOX))


def shrink_object(frame: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The object's colours (uint8, only meaningful on the mask) and mask at ``size``: colours averaged over the
    object's own pixels only (premultiplied by coverage); the mask is the pixels the object covers by half or
    more."""
    coverage = mask.astype(np.float32)
    covered = shrink_band(coverage, size)
    small_mask = covered >= 0.5
    colours = np.stack([shrink_band(frame[..., band] * coverage, size) for band in range(3)], axis=2)
    colours = np.where(small_mask[..., None], colours / np.maximum(covered, 1e-6)[..., None], 0.0)
    return np.clip(np.rint(colours), 0, 255).astype(np.uint8), small_mask


def object_free(state) -> bool:
    """True when the centre square of the label buffer holds walls, floor and ceiling only."""
    values = [label.value for label in state.labels]
    return not np.isin(centre_square(state.labels_buffer), values).any()


def background_frames(game: vzd.DoomGame, map_name: str, count: int, size: int, rng: np.random.Generator,
                      bar: tqdm) -> list[np.ndarray]:
    """``count`` object-free views of the map from a random walk, each (size,size,3) uint8."""
    frames, looks, steps = [], 0, 0
    while len(frames) < count:
        if steps % WALK_STEPS_PER_EPISODE == 0:
            restart(game)
        steps += 1
        game.set_action([float(rng.uniform(-180.0, 180.0)), 0.0])
        game.advance_action(1)
        game.set_action([0.0, WALK_SPEED])
        game.advance_action(int(rng.integers(0, MAX_WALK_TICS + 1)))
        for turn in (0.0, 90.0, 90.0, 90.0):  # look around for a view into the room
            game.set_action([turn, 0.0])
            game.advance_action(1)
            looks += 1
            if game.is_episode_finished():  # the map's script ended it (e.g. the player died)
                restart(game)
                break
            state = game.get_state()
            height = state.depth_buffer.shape[0]
            band = centre_square(state.depth_buffer)[height // 3: 2 * height // 3, height // 6: 5 * height // 6]
            if np.median(band) >= MIN_VIEW_DEPTH and object_free(state):
                frames.append(shrink_image(centre_square(state.screen_buffer), size))
                bar.update()
                looks = 0
                break
        if looks > MAX_TRIES:
            raise RuntimeError(f"map {map_name}: no object-free view into the room in {MAX_TRIES} looks")
        game.set_action([0.0, 0.0])
    return frames


def object_renders(game: vzd.DoomGame, cls: str, count: int, size: int, min_fraction: float,
                   rng: np.random.Generator, bar: tqdm) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` views of a summoned ``cls``: (colours (size,size,3) uint8, mask (size,size) bool)."""
    renders, tries = [], 0
    while len(renders) < count:
        tries += 1
        if tries > MAX_TRIES:
            raise RuntimeError(f"class {cls}: no view with a mask of >= {min_fraction} of the image inside the "
                               f"border in {MAX_TRIES} draws")
        facing, step_back = int(rng.integers(0, 360)), int(rng.integers(0, MAX_STEP_BACK + 1))
        turn = float(rng.uniform(-MAX_TURN, MAX_TURN))
        restart(game)
        before = {thing.id for thing in game.get_state().objects}
        game.send_game_command(f"summon {cls} {facing}")
        game.advance_action(2)  # it settles on the tic after it appears
        summoned = [thing for thing in game.get_state().objects if thing.id not in before and thing.name == cls]
        if not summoned:
            continue
        x, y, angle = game.get_state().game_variables
        heading = math.radians(angle)
        game.send_game_command(f"warp {round(x - step_back * math.cos(heading))} "
                               f"{round(y - step_back * math.sin(heading))}")
        game.set_action([turn, 0.0])
        game.advance_action(1)
        game.set_action([0.0, 0.0])
        game.advance_action(1)
        state = game.get_state()
        values = [label.value for label in state.labels if label.object_id == summoned[0].id]
        if not values:
            continue
        mask = centre_square(state.labels_buffer) == values[0]
        colours, small_mask = shrink_object(centre_square(state.screen_buffer), mask, size)
        border = np.concatenate([small_mask[0], small_mask[-1], small_mask[:, 0], small_mask[:, -1]])
        if small_mask.mean() < min_fraction or border.any():
            continue
        renders.append((colours, small_mask))
        bar.update()
        tries = 0
    return renders


def shifted(image: np.ndarray, mask: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The image with every background pixel replaced by the grey noise texture around the mean brightness
    (luma) of its background pixels; object pixels kept."""
    background = ~mask
    brightness = float((image[background] @ LUMA).mean())
    texture = np.clip(np.rint(brightness + noise[background]), 0, 255).astype(np.uint8)
    result = image.copy()
    result[background] = texture[:, None]
    return result


def render_resolution(image_size: int) -> str:
    return next(resolution for side, resolution in RESOLUTIONS if side >= image_size)


def seeds(seed: int, count: int) -> list[int]:
    """Engine seeds (32-bit) derived from the generator's seed."""
    return [int(value) for value in np.random.SeedSequence([seed, 1]).generate_state(count)]


def generate(args: Args) -> dict:
    """Render, compose and write the data set; returns its metadata (dataset.json)."""
    check_args(args)
    started = time.perf_counter()
    classes, size = list(args.classes), args.image_size
    backgrounds = BACKGROUNDS[:len(classes)]
    planned = plan(args, np.random.default_rng([args.seed, 0]))
    test_images = len(planned["test_balanced"])
    needed_backgrounds = [0] * len(classes)
    needed_objects = [0] * len(classes)
    for split in ("train", "val", "test_balanced"):
        for cls, background in planned[split]:
            needed_backgrounds[background] += 1
            needed_objects[cls] += 1
    resolution = render_resolution(size)
    engine_seeds = seeds(args.seed, len(classes) + 1)
    bar = tqdm(total=sum(needed_backgrounds) + sum(needed_objects), desc="rendering", unit="frame",
               disable=not args.progress, dynamic_ncols=True)
    frames = {}
    for index, map_name in enumerate(backgrounds):
        bar.set_description(f"backgrounds: {map_name}")
        game = start_game(map_name, resolution, engine_seeds[index])
        try:
            frames[index] = background_frames(game, map_name, needed_backgrounds[index], size,
                                              np.random.default_rng([args.seed, 1, index]), bar)
        finally:
            game.close()
    renders = {}
    game = start_game(OBJECT_MAP, resolution, engine_seeds[-1], objects_info=True)
    try:
        for index, cls in enumerate(classes):
            bar.set_description(f"objects: {cls}")
            renders[index] = object_renders(game, cls, needed_objects[index], size, args.min_object_fraction,
                                            np.random.default_rng([args.seed, 2, index]), bar)
    finally:
        game.close()
    bar.close()

    out = Path(args.out)
    noise = TEXTURE_CONTRAST * np.random.default_rng(TEXTURE_SEED).standard_normal((size, size))
    lists = {split: [] for split in SPLITS}
    image_backgrounds = {}
    written = tqdm(total=sum(len(planned[split]) for split in planned) + test_images, desc="writing",
                   unit="img", disable=not args.progress, dynamic_ncols=True)
    for split in ("train", "val", "test_balanced"):
        counters = [0] * len(classes)
        for cls, background in planned[split]:
            colours, mask = renders[cls].pop()
            image = np.where(mask[..., None], colours, frames[background].pop())
            name = f"{split}_{counters[cls]:05d}"
            counters[cls] += 1
            relative = write_sample(out, classes[cls], name, image, mask)
            lists[split].append(relative)
            image_backgrounds[relative] = backgrounds[background]
            written.update()
            if split == "test_balanced":
                relative = write_sample(out, classes[cls], name.replace(split, "test_shifted"),
                                        shifted(image, mask, noise), mask)
                lists["test_shifted"].append(relative)
                image_backgrounds[relative] = "noise"
                written.update()
    written.close()
    for split in SPLITS:
        write_split(out, split, lists[split])
    own = {split: {classes[c]: sum(1 for cls, b in planned[split] if cls == c and b == c) for c in range(len(classes))}
           for split in ("train", "val", "test_balanced")}
    metadata = {
        "generator": "vision/doom_objects.py",
        "generator_version": GENERATOR_VERSION,
        "classes": sorted(classes),
        "background_of_class": dict(zip(classes, backgrounds)),
        "shortcut": args.shortcut,
        "seed": args.seed,
        "image_size": size,
        "images_per_class": split_sizes(args),
        "counts": {split: len(lists[split]) for split in SPLITS},
        "own_background_counts": own,
        "object_map": OBJECT_MAP,
        "render": {"resolution": resolution, "min_object_fraction": args.min_object_fraction,
                   "max_step_back": MAX_STEP_BACK, "max_turn_degrees": MAX_TURN, "min_view_depth": MIN_VIEW_DEPTH,
                   "vizdoom": vzd.__version__},
        "texture": {"seed": TEXTURE_SEED, "contrast": TEXTURE_CONTRAST, "brightness": "mean ITU-R 601 luma of "
                    "the image's background pixels"},
        "args": {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(args).items()
                 if key not in ("out", "progress")},
        "image_background": image_backgrounds,
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
    elapsed = time.perf_counter() - started
    total = sum(metadata["counts"].values())
    print(f"wrote {total} images ({', '.join(f'{s} {n}' for s, n in metadata['counts'].items())}) to {out} in "
          f"{elapsed:.1f} s: {total / elapsed:.0f} images/s")
    return metadata


def main(args: Args) -> dict:
    """Generate; bad arguments, or an engine that finds no acceptable view, exit with one line `error: ...` on
    stderr and status 1, writing nothing."""
    try:
        return generate(args)
    except (GeneratorError, RuntimeError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main(tyro.cli(Args))
