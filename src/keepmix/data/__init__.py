"""Data sets, loaders and the embedded synthetic default.

:func:`load_dataset` is the one entry point::

    data = load_dataset("salient_shapes", split="train")          # no files needed
    data = load_dataset("cifar10", "~/data", "train", download=True)
    data = load_dataset("cub200", "~/data/CUB_200_2011", "test", image_size=224)

It returns a :class:`LoadedDataset`: in-memory sets (SalientShapes, CIFAR) fill ``images``
(uint8 N×3×H×W, ready for :class:`DeviceLoader`); file-backed sets fill ``dataset`` (a
``torch.utils.data.Dataset`` of ``(uint8 3×H×W, int)``, for :func:`make_dataloader`, or for the
streaming path — :class:`StreamDataset` + :class:`StreamLoader`, :mod:`keepmix.data.stream` — whose
workers open each file at its native size and crop it). Both
carry ``labels`` (int64 N), ``num_classes``, ``class_names`` and the normalisation
``mean``/``std`` (0–1 scale):

==================  ==============================  ==============================
data set            mean                            std
==================  ==============================  ==============================
CIFAR-10            (0.4914, 0.4822, 0.4465)        (0.2470, 0.2435, 0.2616)
CIFAR-100           (0.5071, 0.4865, 0.4409)        (0.2673, 0.2564, 0.2762)
SalientShapes       (0.5, 0.5, 0.5)                 (0.135, 0.135, 0.135)
all others          ImageNet (0.485, 0.456, 0.406)  (0.229, 0.224, 0.225)
==================  ==============================  ==============================

SalientShapes splits: ``train`` is generated with ``seed``, ``test`` with ``seed + 1000003``
(the same glyph templates); defaults 1000 images per class for train, 500 for test.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch.utils.data import Dataset

from .cifar import TensorData, load_cifar10, load_cifar100, read_cifar_pickle
from .download import (ChecksumError, ChecksumWarning, download_and_extract, download_url, extract_archive,
                       file_md5, verify_files)
from .fine_grained import caltech101, cub200, fgvc_aircraft, flowers102, stanford_cars
from .images import ImageFileDataset, image_folder, open_rgb, read_image, resize_image
from .loader import (BatchGeometry, DeviceLoader, LoaderBatch, collate_with_geometry, compose_geometry, derive_seed,
                     identity_geometry, make_dataloader, normalize, output_to_source, random_crop_flip,
                     source_to_output)
from .shards import TarShardDataset, shard_paths, tar_shards, write_shards
from .stream import EvalStream, StreamDataset, StreamLoader, StreamSampler, choose_loader, open_image
from .subsets import stratified_subset, train_val_split
from .synthetic import SALIENT_SHAPES_MEAN, SALIENT_SHAPES_STD, SalientShapes, make_templates
from .tiny_imagenet import tiny_imagenet
from .transforms import SampleTransform, center_box, random_resized_box

__all__ = [
    "LoadedDataset", "load_dataset", "available_datasets", "canonical_name", "DESCRIPTIONS", "NORMALIZATION",
    "SalientShapes", "make_templates", "TensorData", "load_cifar10", "load_cifar100", "read_cifar_pickle",
    "ImageFileDataset", "image_folder", "read_image", "resize_image", "tiny_imagenet", "cub200",
    "stanford_cars", "fgvc_aircraft", "caltech101", "flowers102",
    "stratified_subset", "train_val_split", "DeviceLoader", "make_dataloader", "random_crop_flip",
    "normalize", "derive_seed", "BatchGeometry", "LoaderBatch", "identity_geometry", "compose_geometry",
    "output_to_source", "source_to_output", "collate_with_geometry", "download_url", "download_and_extract", "extract_archive", "file_md5",
    "verify_files", "ChecksumError", "ChecksumWarning", "imagenet", "open_rgb",
    "StreamDataset", "StreamSampler", "StreamLoader", "EvalStream", "choose_loader", "open_image", "SampleTransform",
    "random_resized_box", "center_box", "TarShardDataset", "write_shards", "tar_shards", "shard_paths",
]

Stats = Tuple[float, float, float]

CIFAR10_STATS: Tuple[Stats, Stats] = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS: Tuple[Stats, Stats] = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
IMAGENET_STATS: Tuple[Stats, Stats] = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: (mean, std) per registered name, on the 0–1 scale
NORMALIZATION: Dict[str, Tuple[Stats, Stats]] = {
    "salient_shapes": (SALIENT_SHAPES_MEAN, SALIENT_SHAPES_STD),
    "cifar10": CIFAR10_STATS,
    "cifar100": CIFAR100_STATS,
    "tiny_imagenet": IMAGENET_STATS,
    "imagefolder": IMAGENET_STATS,
    "imagenet": IMAGENET_STATS,
    "shards": IMAGENET_STATS,
    "cub200": IMAGENET_STATS,
    "cars": IMAGENET_STATS,
    "aircraft": IMAGENET_STATS,
    "caltech101": IMAGENET_STATS,
    "flowers102": IMAGENET_STATS,
}

#: offset between the SalientShapes train and test seeds
SALIENT_SHAPES_TEST_SEED_OFFSET = 1000003


@dataclass
class LoadedDataset:
    """One split of a data set, as :func:`load_dataset` returns it.

    Attributes:
        name, split: what was loaded.
        images: uint8 N×3×H×W for in-memory sets, else ``None``.
        dataset: the ``Dataset`` (``(uint8 3×H×W, int)`` items); for in-memory sets a view
            over ``images``/``labels``.
        labels: int64 N.
        num_classes, class_names: the K classes.
        mean, std: per-channel normalisation on the 0–1 scale.
        image_size: (h, w) of every image, or ``None`` when file-backed images keep native sizes.
        boxes, masks: SalientShapes only — object boxes N×4 (top, left, bottom, right) and
            glyph masks N×H×W.
    """

    name: str
    split: str
    images: Optional[torch.Tensor]
    dataset: Dataset
    labels: torch.Tensor
    num_classes: int
    class_names: List[str]
    mean: Stats
    std: Stats
    image_size: Optional[Tuple[int, int]]
    boxes: Optional[torch.Tensor] = None
    masks: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _in_memory(name: str, split: str, data: TensorData) -> LoadedDataset:
    mean, std = NORMALIZATION[name]
    dataset = torch.utils.data.TensorDataset(data.images, data.labels)
    return LoadedDataset(name, split, data.images, dataset, data.labels, data.num_classes, list(data.class_names),
                         mean, std, tuple(data.images.shape[-2:]))


def _file_backed(name: str, split: str, dataset: ImageFileDataset) -> LoadedDataset:
    mean, std = NORMALIZATION[name]
    return LoadedDataset(name, split, None, dataset, dataset.targets, dataset.num_classes, list(dataset.class_names),
                         mean, std, dataset.image_size)


def _need_root(name: str, root) -> Path:
    if root is None:
        raise ValueError(f"root is required for {name!r}: the folder holding (or to receive) its files")
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path, got {type(root).__name__}")
    return Path(root).expanduser()


def _no_download(name: str, download: bool) -> None:
    if download:
        raise ValueError(f"download=True is only supported for CIFAR-10/100; fetch {name!r} by hand "
                         f"from its official site and pass its folder as root")


def _salient_shapes(root, split, download, strict, n_per_class: Optional[int] = None, seed: int = 0, **options):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for 'salient_shapes', got {split!r}")
    if n_per_class is None:
        n_per_class = 1000 if split == "train" else 500
    split_seed = seed if split == "train" else seed + SALIENT_SHAPES_TEST_SEED_OFFSET
    shapes = SalientShapes(n_per_class, seed=split_seed, **options)
    mean, std = NORMALIZATION["salient_shapes"]
    return LoadedDataset("salient_shapes", split, shapes.images, shapes, shapes.labels, shapes.num_classes,
                         list(shapes.class_names), mean, std, shapes.image_size, shapes.boxes, shapes.masks)


def _cifar10(root, split, download, strict, **options):
    return _in_memory("cifar10", split, load_cifar10(_need_root("cifar10", root), split, download=download,
                                                     strict=strict, **options))


def _cifar100(root, split, download, strict, **options):
    return _in_memory("cifar100", split, load_cifar100(_need_root("cifar100", root), split, download=download,
                                                       strict=strict, **options))


def imagenet(root, split: str = "train", *, image_size=None, transform=None) -> ImageFileDataset:
    """ILSVRC-2012 as an ImageFolder: ``root/train/<wnid>/*.JPEG`` and ``root/val/<wnid>/*.JPEG`` (the
    validation images sorted into class folders, as PyTorch's ImageNet example expects); 1000 classes."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val' for 'imagenet', got {split!r}")
    return image_folder(root, split, image_size=image_size, transform=transform)


def _files(name: str, loader: Callable[..., ImageFileDataset]):
    def load(root, split, download, strict, **options):
        _no_download(name, download)
        return _file_backed(name, split, loader(_need_root(name, root), split, **options))
    return load


_REGISTRY: Dict[str, Callable[..., LoadedDataset]] = {
    "salient_shapes": _salient_shapes,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "tiny_imagenet": _files("tiny_imagenet", tiny_imagenet),
    "imagefolder": _files("imagefolder", image_folder),
    "imagenet": _files("imagenet", imagenet),
    "shards": _files("shards", tar_shards),
    "cub200": _files("cub200", cub200),
    "cars": _files("cars", stanford_cars),
    "aircraft": _files("aircraft", fgvc_aircraft),
    "caltech101": _files("caltech101", caltech101),
    "flowers102": _files("flowers102", flowers102),
}


#: other spellings (after lower-casing and turning ``-`` into ``_``: ``salient-shapes`` is ``salient_shapes``)
_ALIASES = {"cifar_10": "cifar10", "cifar_100": "cifar100", "tinyimagenet": "tiny_imagenet",
            "cub": "cub200", "cub_200_2011": "cub200", "stanford_cars": "cars", "fgvc_aircraft": "aircraft",
            "caltech_101": "caltech101", "flowers_102": "flowers102", "salientshapes": "salient_shapes",
            "image_folder": "imagefolder", "ilsvrc2012": "imagenet", "webdataset": "shards",
            "tar_shards": "shards"}


#: one line per data set, for ``keepmix list datasets``
DESCRIPTIONS: Dict[str, str] = {
    "salient_shapes": "embedded: 10 classes of 8×8 glyphs on cluttered 32×32 backgrounds, generated in memory",
    "cifar10": "CIFAR-10, the official python pickles (data.download: true fetches them)",
    "cifar100": "CIFAR-100, the official python pickles (data.download: true fetches them)",
    "tiny_imagenet": "Tiny-ImageNet-200 folder (200 classes, 64×64; val = test)",
    "imagefolder": "any ROOT/<split>/<class>/*.jpg folder",
    "imagenet": "ILSVRC-2012 as ROOT/{train,val}/<wnid>/*.JPEG (1000 classes; streamed by default)",
    "shards": "WebDataset-format tar shards ROOT/<split>-NNNNNN.tar (+ classes.txt): python -m keepmix.data.shards",
    "cub200": "CUB-200-2011 birds, its published layout",
    "cars": "Stanford Cars, its published layout (.mat files: keepmix[fgvc])",
    "aircraft": "FGVC-Aircraft 2013b, its published layout",
    "caltech101": "Caltech-101 (seeded stratified 0.8/0.2 split)",
    "flowers102": "Oxford Flowers-102, its published layout (.mat files: keepmix[fgvc])",
}


def canonical_name(name: str) -> str:
    """The registered name of a data set spelling (``salient-shapes``, ``Salient_Shapes`` → ``salient_shapes``);
    ValueError for an unknown one."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ValueError(f"unknown data set {name!r}; available: {', '.join(_REGISTRY)}")
    return key


def available_datasets() -> List[str]:
    """Names :func:`load_dataset` accepts."""
    return list(_REGISTRY)


def load_dataset(name: str = "salient_shapes", root: Union[str, os.PathLike, None] = None, split: str = "train",
                 download: bool = False, strict: bool = False, **options) -> LoadedDataset:
    """Load one split of a registered data set.

    Args:
        name: one of :func:`available_datasets` (case-insensitive; ``-`` is read as ``_``, so
            ``salient-shapes`` is ``salient_shapes``).
        root: the data folder (not used by ``"salient_shapes"``).
        split: ``"train"``/``"test"`` everywhere; ``"val"``/``"trainval"`` where the set has
            them (Tiny-ImageNet ``val`` = ``test``; Aircraft, Flowers-102). ``"imagefolder"``
            reads ``root/<split>/<class>/``, or ``root/<class>/`` with ``split=None``.
        download: fetch the official archive (CIFAR only).
        strict: refuse CIFAR files whose MD5 differs from the published one.
        **options: passed to the loader — ``image_size``/``transform`` for file-backed sets,
            ``split_seed``/``test_fraction`` for Caltech-101, ``label_type`` for CIFAR-100,
            ``n_per_class``/``seed``/``clutter``/``object_size``/``image_size``… for SalientShapes.

    Returns:
        :class:`LoadedDataset`.
    """
    return _REGISTRY[canonical_name(name)](root, split, download, strict, **options)
