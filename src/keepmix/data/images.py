"""File-backed image data sets: decoding, resizing, the ``ImageFileDataset`` base.

Decoding JPEG/PNG files needs Pillow, an optional dependency (``pip install pillow``). It is
imported only when a file-backed data set is built; without it a clear ``ImportError`` says
what to install. Everything after decoding is torch.

An :class:`ImageFileDataset` is a ``torch.utils.data.Dataset`` of ``(image, label)`` pairs with
``image`` a uint8 3×H×W tensor (RGB; grey, palette and CMYK files are converted) and ``label``
an ``int``. With ``image_size=(h, w)`` every image is resized to h×w, so a ``DataLoader`` can
stack them; without it images keep their native sizes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .._checks import check_size

PathLike = Union[str, os.PathLike]

#: file name suffixes treated as images (compared case-insensitively)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp")

PILLOW_HINT = ("Decoding image files needs Pillow, an optional dependency of keepmix: "
               "pip install pillow")


def require_pillow():
    """Import and return ``PIL.Image``, or raise ``ImportError`` telling the user to install Pillow."""
    try:
        from PIL import Image
    except ImportError as error:
        raise ImportError(PILLOW_HINT) from error
    return Image


def is_image_file(path: PathLike) -> bool:
    name = os.path.basename(os.fspath(path))
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def open_rgb(source, what=None):
    """Decode an image (a path or a binary file object) into an RGB PIL image at its native size.

    ``what`` names the source in the error raised for a broken file (default: the path).
    """
    image_module = require_pillow()
    try:
        with image_module.open(source) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:  # Pillow reports broken files in these
        name = what if what is not None else source
        raise ValueError(f"image file {name} could not be decoded ({type(error).__name__}: {error})") from error


def read_image(path: PathLike) -> torch.Tensor:
    """Decode an image file into a uint8 3×H×W RGB tensor."""
    array = np.asarray(open_rgb(path), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def resize_image(image: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 C×H×W or B×C×H×W image to ``size`` = (h, w).

    Bilinear interpolation with antialiasing when shrinking (``F.interpolate``,
    ``align_corners=False``), computed in float32 and rounded back to uint8. An image
    already of that size is returned unchanged.
    """
    height, width = size
    if tuple(image.shape[-2:]) == (height, width):
        return image
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    resized = F.interpolate(batch.float(), size=(height, width), mode="bilinear", align_corners=False,
                            antialias=True)
    resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized if image.ndim == 4 else resized.squeeze(0)


class ImageFileDataset(Dataset):
    """``(uint8 3×H×W image, int label)`` pairs read from files on demand.

    Args:
        paths: one file per sample.
        labels: one class index per sample, in ``[0, len(class_names))``.
        class_names: names of the K classes.
        image_size: ``None`` (native sizes) or an int / (h, w) every image is resized to.
        transform: optional callable applied to the uint8 image after resizing.

    Attributes:
        targets: int64 tensor of the labels (read without decoding any image).
    """

    def __init__(self, paths: Sequence[PathLike], labels: Sequence[int], class_names: Sequence[str],
                 image_size=None, transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        require_pillow()
        self.paths: List[Path] = [Path(p) for p in paths]
        self.targets = torch.as_tensor(np.asarray(labels, dtype=np.int64).reshape(-1))
        self.class_names: List[str] = [str(n) for n in class_names]
        if len(self.paths) != self.targets.shape[0]:
            raise ValueError(f"labels must hold one entry per path: {len(self.paths)} paths, "
                             f"{self.targets.shape[0]} labels")
        if len(self.paths) == 0:
            raise ValueError("an image data set needs at least one image, got none")
        if not self.class_names:
            raise ValueError("class_names must name at least one class")
        if int(self.targets.min()) < 0 or int(self.targets.max()) >= len(self.class_names):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), "
                             f"got [{int(self.targets.min())}, {int(self.targets.max())}]")
        self.image_size: Optional[Tuple[int, int]] = None if image_size is None else check_size(image_size,
                                                                                             "image_size")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def open_image(self, index: int):
        """Sample ``index`` as an RGB PIL image at its native size (what the streaming path's workers crop)."""
        return open_rgb(self.paths[index])

    def __getitem__(self, index: int):
        image = read_image(self.paths[index])
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    def to_tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode every image into one uint8 N×3×h×w tensor (needs ``image_size``) and the labels.

        For sets that fit in memory, to feed a :class:`~keepmix.data.loader.DeviceLoader`.
        """
        if self.image_size is None:
            raise ValueError("to_tensors needs image_size so that all images share one size")
        height, width = self.image_size
        images = torch.empty((len(self), 3, height, width), dtype=torch.uint8)
        for index, path in enumerate(self.paths):  # decoding is per file by nature
            images[index] = resize_image(read_image(path), self.image_size)
        return images, self.targets.clone()


def scan_image_folder(folder: PathLike, classes: Optional[Sequence[str]] = None, exclude: Sequence[str] = ()
                      ) -> Tuple[List[Path], List[int], List[str]]:
    """Walk an ImageFolder tree ``folder/<class>/.../<image>``.

    Classes are the sub-folders in sorted order (label k is the k-th name) unless ``classes``
    fixes the list (then every sub-folder must be in it; a listed class without a folder simply
    has no images here). Sub-folders named in ``exclude`` are ignored. Image files are
    collected recursively and sorted; hidden files and non-image suffixes are skipped.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: no class folders, an unlisted class folder, or a class folder without images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    class_dirs = sorted(d for d in folder.iterdir()
                        if d.is_dir() and not d.name.startswith(".") and d.name not in exclude)
    if not class_dirs:
        raise ValueError(f"image folder {folder} holds no class sub-folders (expected {folder}/<class>/<image>)")
    names = [d.name for d in class_dirs] if classes is None else [str(c) for c in classes]
    index = {name: k for k, name in enumerate(names)}
    paths: List[Path] = []
    labels: List[int] = []
    for class_dir in class_dirs:
        if class_dir.name not in index:
            raise ValueError(f"class folder {class_dir} is not one of the expected classes")
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise ValueError(f"class folder {class_dir} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([index[class_dir.name]] * len(files))
    return paths, labels, names


def image_folder(root: PathLike, split: Optional[str] = None, *, image_size=None,
                 transform=None) -> ImageFileDataset:
    """An ImageFolder tree as an :class:`ImageFileDataset`.

    ``root/<class>/<image>`` when ``split`` is ``None``. With a ``split``, the tree is
    ``root/<split>/<class>/<image>`` (``root/train``, ``root/test``…) and the class list is the
    sorted union of the class folders of all split folders under ``root``, so a label means the
    same class in every split even when a split lacks some class.
    """
    root = Path(root)
    if split is None:
        paths, labels, names = scan_image_folder(root)
    else:
        folder = root / split
        if not folder.is_dir():
            raise FileNotFoundError(f"split folder {folder} does not exist (expected {root}/<split>/<class>/<image>, "
                                    f"or pass split=None for {root}/<class>/<image>)")
        names = sorted({c.name for s in root.iterdir() if s.is_dir() and not s.name.startswith(".")
                        for c in s.iterdir() if c.is_dir() and not c.name.startswith(".")})
        paths, labels, names = scan_image_folder(folder, names)
    return ImageFileDataset(paths, labels, names, image_size=image_size, transform=transform)
