"""The image-and-mask folder format of the supervised paradigm, its loader and its writer (docs/vision.md).

    DATA/
      images/<class>/<name>.<png|jpg|jpeg>   class folders, as torchvision's ImageFolder
      masks/<class>/<stem>.png               same class and stem, PNG; nonzero = the object; same W x H as the image
      splits/<split>.txt                     one image path per line, relative to images/ ("<class>/<name>.png")
      dataset.json                           optional metadata

Classes are the sorted folder names under images/ (label = index). :class:`ImageMaskFolder` checks the folder
when it is built (every problem is a :class:`FolderError` naming the file) and decodes images on access.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
MASK_EXTENSION = ".png"
METADATA_FILE = "dataset.json"


class FolderError(ValueError):
    """A problem with an image-and-mask folder; the message names the file and what is valid."""


def splits_of(root: str | Path) -> list[str]:
    """The sorted split names: the stems of DATA/splits/*.txt."""
    root = Path(root)
    if not root.is_dir():
        raise FolderError(f"{root}: no such folder (expected a data folder holding images/, masks/ and splits/)")
    names = sorted(path.stem for path in (root / "splits").glob("*.txt") if path.is_file())
    if not names:
        raise FolderError(f"{root / 'splits'}: no split files (expected splits/<split>.txt, one image path per line)")
    return names


def read_metadata(root: str | Path) -> dict:
    """The contents of DATA/dataset.json, or {} when the folder has none."""
    path = Path(root) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        metadata = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FolderError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise FolderError(f"{path}: expected a JSON object, got {type(metadata).__name__}")
    return metadata


def class_folders(images_dir: Path) -> list[str]:
    """Sorted class names under images/; each must hold at least one image."""
    classes = sorted(path.name for path in images_dir.iterdir() if path.is_dir())
    if not classes:
        raise FolderError(f"{images_dir}: no class folders (expected images/<class>/<name>.png)")
    for name in classes:
        if not any(is_image_file(path) for path in (images_dir / name).iterdir()):
            raise FolderError(f"{images_dir / name}: empty class (no {'/'.join(IMAGE_EXTENSIONS)} images)")
    return classes


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding it."""
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise FolderError(f"{path}: unreadable image ({error})") from None


class ImageMaskFolder(torch.utils.data.Dataset):
    """One split of a folder: items (image float32 (3,S,S) in [0,1], mask float32 (S,S) in {0,1}, label int).

    ``image_size`` S resizes images (bilinear, antialiased) and masks (nearest) to S x S; None keeps the native
    size, which every image of the split must then share.
    """

    def __init__(self, root: str | Path, split: str, image_size: int | None = None):
        self.root = Path(root)
        self.split = split
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size < 1):
            raise FolderError(f"image_size must be a positive int or None, got {image_size!r}")
        self.image_size = image_size
        images_dir = self.root / "images"
        if not self.root.is_dir():
            raise FolderError(f"{self.root}: no such folder (expected a data folder holding images/, masks/, splits/)")
        if not images_dir.is_dir():
            raise FolderError(f"{images_dir}: missing (expected images/<class>/<name>.png)")
        valid = splits_of(self.root)
        if split not in valid:
            raise FolderError(f"{self.root / 'splits'}: no split '{split}'; valid: {', '.join(valid)}")
        self.classes = class_folders(images_dir)
        self.samples = self.read_split(self.root / "splits" / f"{split}.txt")
        self.native_size = self.check_sizes()

    def read_split(self, split_file: Path) -> list[tuple[Path, Path, int]]:
        labels = {name: index for index, name in enumerate(self.classes)}
        samples = []
        for number, line in enumerate(split_file.read_text().splitlines(), start=1):
            relative = line.strip()
            if not relative:
                continue
            where = f"{split_file}:{number}"
            parts = relative.split("/")
            if len(parts) != 2 or "" in parts or ".." in parts or "\\" in relative:
                raise FolderError(f"{where}: '{relative}' is not a path '<class>/<name>.png' relative to images/")
            class_name, file_name = parts
            if class_name not in labels:
                raise FolderError(f"{where}: class '{class_name}' is not a folder under {self.root / 'images'}; "
                                  f"classes: {', '.join(self.classes)}")
            image_path = self.root / "images" / relative
            if Path(file_name).suffix.lower() not in IMAGE_EXTENSIONS:
                raise FolderError(f"{where}: '{relative}' is not a {'/'.join(IMAGE_EXTENSIONS)} image")
            if not image_path.is_file():
                raise FolderError(f"{where}: names {relative}, but {image_path} does not exist")
            mask_path = self.root / "masks" / class_name / (Path(file_name).stem + MASK_EXTENSION)
            if not mask_path.is_file():
                raise FolderError(f"{mask_path}: missing mask of {image_path} (expected masks/<class>/<stem>.png)")
            samples.append((image_path, mask_path, labels[class_name]))
        if not samples:
            raise FolderError(f"{split_file}: empty split (expected one '<class>/<name>.png' per line)")
        return samples

    def check_sizes(self) -> tuple[int, int]:
        """Every mask has its image's size; without image_size, all images share one. Returns the first size."""
        first = None
        for image_path, mask_path, _ in self.samples:
            size, mask_size = header_size(image_path), header_size(mask_path)
            if mask_size != size:
                raise FolderError(f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]}, but its image {image_path} "
                                  f"is {size[0]}x{size[1]} (W x H must match)")
            if first is None:
                first = (size, image_path)
            elif self.image_size is None and size != first[0]:
                raise FolderError(f"{image_path}: {size[0]}x{size[1]}, but {first[1]} is {first[0][0]}x{first[0][1]}; "
                                  f"images of different sizes need an image_size to resize them to")
        return first[0]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 (H,W,3), mask bool (H,W)) of one sample, resized to image_size if set."""
        image_path, mask_path, _ = self.samples[index]
        image, mask = decode(image_path, "RGB"), decode(mask_path, None)
        if image.size != mask.size:  # the file changed since the folder was checked
            raise FolderError(f"{mask_path}: mask is {mask.size[0]}x{mask.size[1]}, but its image {image_path} "
                              f"is {image.size[0]}x{image.size[1]} (W x H must match)")
        object_pixels = mask_pixels(mask)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            image = image.resize(size, Image.BILINEAR)  # PIL's bilinear widens its filter when it shrinks
            object_pixels = np.array(Image.fromarray(object_pixels).resize(size, Image.NEAREST))
        return np.array(image), object_pixels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        image, mask = self.load(index)
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        return image, torch.from_numpy(mask.astype(np.float32)), self.samples[index][2]

    def tensors(self, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole split in memory: images uint8 (N,3,S,S), masks bool (N,S,S), labels int64 (N,)."""
        width, height = (self.image_size, self.image_size) if self.image_size else self.native_size
        count = len(self.samples)
        images = torch.empty((count, 3, height, width), dtype=torch.uint8)
        masks = torch.empty((count, height, width), dtype=torch.bool)
        labels = torch.tensor([label for _, _, label in self.samples], dtype=torch.int64)
        for index in tqdm(range(count), desc=f"loading {self.split}", unit="img", disable=not progress,
                          dynamic_ncols=True):
            image, mask = self.load(index)
            images[index] = torch.from_numpy(image.transpose(2, 0, 1))
            masks[index] = torch.from_numpy(mask)
        return images, masks, labels


def decode(path: Path, mode: str | None) -> Image.Image:
    """The decoded image (converted to ``mode`` if given); FolderError naming the file if it is corrupt."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode and image.mode != mode else image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise FolderError(f"{path}: unreadable or corrupt image ({error})") from None


def mask_pixels(mask: Image.Image) -> np.ndarray:
    """Bool (H,W): the pixels where any colour band is nonzero (an alpha band is not a colour)."""
    values = np.asarray(mask)
    if values.ndim == 2:
        return values != 0
    bands = [index for index, band in enumerate(mask.getbands()) if band != "A"]
    return values[..., bands].any(axis=2)


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise ValueError(f"{kind} must be a non-empty file name without '/' or '\\', got {name!r}")


def write_sample(root: str | Path, cls: str, name: str, image_uint8_hwc: np.ndarray,
                 mask_bool_hw: np.ndarray) -> str:
    """Write images/<cls>/<name>.png and masks/<cls>/<name>.png (``name``: the stem); returns "<cls>/<name>.png"."""
    check_name("class", cls)
    check_name("name", name)
    image, mask = np.asarray(image_uint8_hwc), np.asarray(mask_bool_hw)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 of shape (H, W, 3), got {image.dtype} {image.shape}")
    if mask.dtype != np.bool_ or mask.shape != image.shape[:2]:
        raise ValueError(f"mask must be bool of shape {image.shape[:2]} (the image's H, W), got {mask.dtype} "
                         f"{mask.shape}")
    relative = f"{cls}/{name}.png"
    for folder, picture in (("images", Image.fromarray(image)),
                            ("masks", Image.fromarray(mask.astype(np.uint8) * 255))):
        path = Path(root) / folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        picture.save(path)
    return relative


def write_split(root: str | Path, split: str, rel_paths: list[str]) -> Path:
    """Write splits/<split>.txt, one image path relative to images/ per line; returns its path."""
    check_name("split", split)
    rel_paths = list(rel_paths)
    if not rel_paths:
        raise ValueError(f"split '{split}' needs at least one image path")
    path = Path(root) / "splits" / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{relative}\n" for relative in rel_paths))
    return path
