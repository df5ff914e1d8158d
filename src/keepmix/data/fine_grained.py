"""The fine-grained sets of the GuidedMixup experiments, read from their published layouts.

Every loader returns an :class:`~keepmix.data.images.ImageFileDataset` of
``(uint8 3×H×W, int label)`` pairs; pass ``image_size`` so a ``DataLoader`` can stack them.
Labels are 0-based; where the files number classes from 1, label = number − 1.

* CUB-200-2011 — ``images.txt`` ("<id> <path>"), ``image_class_labels.txt`` ("<id> <class>"),
  ``train_test_split.txt`` ("<id> <1 train | 0 test>"), ``classes.txt`` ("<class> <name>"),
  ``images/``. Splits ``train``/``test``.
* Stanford Cars — devkit ``cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat``
  (struct ``annotations`` with ``fname`` and ``class``), ``cars_meta.mat`` (``class_names``),
  images in ``cars_train/`` and ``cars_test/``; or the common ImageFolder re-pack
  ``root/{train,test}/<class>/``. Splits ``train``/``test``. ``.mat`` files need scipy.
* FGVC-Aircraft — ``data/variants.txt`` (the 100 variants, label = line order),
  ``data/images_variant_<split>.txt`` ("<image id> <variant>"), ``data/images/<id>.jpg``.
  Splits ``train``/``val``/``test``/``trainval``.
* Caltech-101 — ``101_ObjectCategories/<class>/``, ``BACKGROUND_Google`` dropped (101
  classes, sorted). There is no official split: a class-stratified 0.8/0.2 split
  (:func:`~keepmix.data.subsets.train_val_split` with ``test_fraction``), seeded by
  ``split_seed`` through ``torch.Generator``; train and test of one seed partition the set.
* Oxford Flowers-102 — ``jpg/image_<00001>.jpg``, ``imagelabels.mat`` (``labels``, 1…102 per
  image), ``setid.mat`` (``trnid``/``valid``/``tstid``, 1-based image numbers). Splits
  ``train``/``val``/``test``/``trainval``. The files carry no class names: ``flower_001`` …
  ``flower_102`` name the official label numbers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
import torch

from .images import ImageFileDataset, image_folder, require_pillow, scan_image_folder
from .subsets import train_val_split

PathLike = Union[str, os.PathLike]

SCIPY_HINT = "Reading MATLAB .mat annotation files needs SciPy, an optional dependency: pip install scipy"


def require_scipy_io():
    """Import and return ``scipy.io``, or raise ``ImportError`` telling the user to install SciPy."""
    try:
        import scipy.io
    except ImportError as error:
        raise ImportError(SCIPY_HINT) from error
    return scipy.io


def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "r", encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]


def _pairs(path: Path) -> List[Tuple[str, str]]:
    """Lines "<first token> <rest>" of a metadata file."""
    pairs = []
    for number, line in enumerate(_read_lines(path), start=1):
        first, _, rest = line.partition(" ")
        if not rest.strip():
            raise ValueError(f"{path} line {number} is not '<id> <value>': {line!r}")
        pairs.append((first, rest.strip()))
    return pairs


def _first_existing(candidates: Sequence[Path], marker: str, what: str) -> Path:
    for candidate in candidates:
        if (candidate / marker).exists():
            return candidate
    raise FileNotFoundError(f"no {what} found: expected {marker} in one of "
                            f"{', '.join(str(c) for c in candidates)}")


def _check_split(split: str, allowed: Sequence[str], what: str) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in allowed)} for {what}, got {split!r}")


def _to_int(value: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{path} holds {value!r} where an integer was expected") from None


# --------------------------------------------------------------------------- CUB-200-2011

def cub200(root: PathLike, split: str = "train", *, image_size=None, transform=None) -> ImageFileDataset:
    """CUB-200-2011 (``root`` holds ``images.txt`` or ``CUB_200_2011/``); class names drop the "001." prefix."""
    _check_split(split, ("train", "test"), "CUB-200-2011")
    require_pillow()
    root = Path(root)
    folder = _first_existing([root, root / "CUB_200_2011"], "images.txt", "CUB-200-2011")
    images = dict(_pairs(folder / "images.txt"))
    labels_file, split_file = folder / "image_class_labels.txt", folder / "train_test_split.txt"
    classes_of = {i: _to_int(c, labels_file) for i, c in _pairs(labels_file)}
    is_train = {i: _to_int(t, split_file) for i, t in _pairs(split_file)}
    class_rows = [(_to_int(c, folder / "classes.txt"), name) for c, name in _pairs(folder / "classes.txt")]
    class_rows.sort()
    numbers = [c for c, _ in class_rows]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError(f"{folder / 'classes.txt'} must number classes 1…K without gaps")
    class_names = [name.split(".", 1)[1] if "." in name and name.split(".", 1)[0].isdigit() else name
                   for _, name in class_rows]
    wanted = 1 if split == "train" else 0
    paths, labels = [], []
    for image_id in sorted(images, key=lambda i: (len(i), i)):
        if image_id not in classes_of or image_id not in is_train:
            raise ValueError(f"CUB image id {image_id} lacks a class label or a train/test flag")
        if is_train[image_id] != wanted:
            continue
        number = classes_of[image_id]
        if not 1 <= number <= len(class_names):
            raise ValueError(f"CUB image id {image_id} has class {number}, outside 1…{len(class_names)}")
        paths.append(folder / "images" / images[image_id])
        labels.append(number - 1)
    return ImageFileDataset(paths, labels, class_names, image_size=image_size, transform=transform)


# --------------------------------------------------------------------------- Stanford Cars

def _mat_field(struct: np.ndarray, field: str, path: Path) -> list:
    if struct.dtype.names is None or field not in struct.dtype.names:
        raise ValueError(f"{path}: the annotations have no field {field!r} "
                         f"(fields: {struct.dtype.names})")
    return [value.item() if isinstance(value, np.ndarray) else value for value in np.atleast_1d(struct[field])]


def stanford_cars(root: PathLike, split: str = "train", *, image_size=None, transform=None) -> ImageFileDataset:
    """Stanford Cars from the devkit ``.mat`` files, or from an ImageFolder re-pack ``root/<split>/<class>/``."""
    _check_split(split, ("train", "test"), "Stanford Cars")
    require_pillow()
    root = Path(root)
    annos_name = "cars_train_annos.mat" if split == "train" else "cars_test_annos_withlabels.mat"
    annos_path = next((d / annos_name for d in (root, root / "devkit", root / "car_devkit" / "devkit")
                       if (d / annos_name).is_file()), None)
    if annos_path is None:
        if (root / split).is_dir():
            return image_folder(root, split, image_size=image_size, transform=transform)
        raise FileNotFoundError(f"no Stanford Cars {split} annotations under {root}: expected {annos_name} in "
                                f"{root} or {root / 'devkit'} (or an ImageFolder re-pack {root / split}/<class>/)")
    scipy_io = require_scipy_io()
    annotations = scipy_io.loadmat(annos_path, squeeze_me=True)
    if "annotations" not in annotations:
        raise ValueError(f"{annos_path} holds no 'annotations' struct")
    struct = np.atleast_1d(annotations["annotations"])
    file_names = [str(f) for f in _mat_field(struct, "fname", annos_path)]
    numbers = [int(c) for c in _mat_field(struct, "class", annos_path)]
    meta_path = annos_path.parent / "cars_meta.mat"
    if meta_path.is_file():
        class_names = [str(n) for n in np.atleast_1d(scipy_io.loadmat(meta_path, squeeze_me=True)["class_names"])]
    else:
        class_names = [f"car_{k:03d}" for k in range(1, max(numbers) + 1)]
    if min(numbers) < 1 or max(numbers) > len(class_names):
        raise ValueError(f"{annos_path}: classes must lie in 1…{len(class_names)}, "
                         f"got {min(numbers)}…{max(numbers)}")
    image_folder_name = "cars_train" if split == "train" else "cars_test"
    image_root = next((d for d in (root / image_folder_name, root / image_folder_name / image_folder_name)
                       if d.is_dir()), root / image_folder_name)
    paths = [image_root / name for name in file_names]
    return ImageFileDataset(paths, [n - 1 for n in numbers], class_names, image_size=image_size, transform=transform)


# --------------------------------------------------------------------------- FGVC-Aircraft

def fgvc_aircraft(root: PathLike, split: str = "trainval", *, image_size=None, transform=None) -> ImageFileDataset:
    """FGVC-Aircraft variants (100 classes); ``root`` holds ``data/`` or ``fgvc-aircraft-2013b/``."""
    _check_split(split, ("train", "val", "test", "trainval"), "FGVC-Aircraft")
    require_pillow()
    root = Path(root)
    folder = _first_existing([root, root / "fgvc-aircraft-2013b"], "data/variants.txt", "FGVC-Aircraft") / "data"
    variants = _read_lines(folder / "variants.txt")
    index = {name: k for k, name in enumerate(variants)}
    listing = folder / f"images_variant_{split}.txt"
    paths, labels = [], []
    for number, (image_id, variant) in enumerate(_pairs(listing), start=1):
        if variant not in index:
            raise ValueError(f"{listing} line {number} names variant {variant!r}, not listed in variants.txt")
        paths.append(folder / "images" / f"{image_id}.jpg")
        labels.append(index[variant])
    return ImageFileDataset(paths, labels, variants, image_size=image_size, transform=transform)


# --------------------------------------------------------------------------- Caltech-101

CALTECH_BACKGROUND = "BACKGROUND_Google"


def caltech101(root: PathLike, split: str = "train", *, image_size=None, transform=None,
               split_seed: int = 0, test_fraction: float = 0.2) -> ImageFileDataset:
    """Caltech-101 with a seeded, class-stratified train/test split (see the module docstring)."""
    _check_split(split, ("train", "test"), "Caltech-101")
    require_pillow()
    root = Path(root)
    candidates = [root / "101_ObjectCategories", root / "caltech101" / "101_ObjectCategories", root]
    folder = next((c for c in candidates if c.is_dir() and any(d.is_dir() for d in c.iterdir())), None)
    if folder is None:
        raise FileNotFoundError(f"no Caltech-101 under {root}: expected {candidates[0]}/<class>/<image>")
    paths, labels, class_names = scan_image_folder(folder, exclude=(CALTECH_BACKGROUND,))
    generator = torch.Generator().manual_seed(int(split_seed))
    train_indices, test_indices = train_val_split(torch.tensor(labels), test_fraction, generator)
    chosen = (train_indices if split == "train" else test_indices).tolist()
    return ImageFileDataset([paths[i] for i in chosen], [labels[i] for i in chosen], class_names,
                            image_size=image_size, transform=transform)


# --------------------------------------------------------------------------- Oxford Flowers-102

_FLOWERS_SPLIT_KEYS: Dict[str, Tuple[str, ...]] = {
    "train": ("trnid",), "val": ("valid",), "test": ("tstid",), "trainval": ("trnid", "valid"),
}


def _mat_vector(mat: dict, key: str, path: Path) -> np.ndarray:
    if key not in mat:
        raise ValueError(f"{path} holds no {key!r} entry (keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return np.atleast_1d(np.asarray(mat[key])).reshape(-1).astype(np.int64)


def flowers102(root: PathLike, split: str = "train", *, image_size=None, transform=None) -> ImageFileDataset:
    """Oxford Flowers-102; ``root`` holds ``jpg/``, ``imagelabels.mat`` and ``setid.mat``."""
    _check_split(split, tuple(_FLOWERS_SPLIT_KEYS), "Flowers-102")
    require_pillow()
    root = Path(root)
    folder = _first_existing([root, root / "flowers-102", root / "flowers102"], "imagelabels.mat", "Flowers-102")
    scipy_io = require_scipy_io()
    labels_path, setid_path = folder / "imagelabels.mat", folder / "setid.mat"
    if not setid_path.is_file():
        raise FileNotFoundError(f"{setid_path} does not exist")
    all_labels = _mat_vector(scipy_io.loadmat(labels_path, squeeze_me=True), "labels", labels_path)
    setid = scipy_io.loadmat(setid_path, squeeze_me=True)
    image_numbers = np.concatenate([_mat_vector(setid, key, setid_path) for key in _FLOWERS_SPLIT_KEYS[split]])
    if image_numbers.size and (image_numbers.min() < 1 or image_numbers.max() > all_labels.size):
        raise ValueError(f"{setid_path}: image numbers must lie in 1…{all_labels.size} "
                         f"(the images labelled in {labels_path})")
    num_classes = int(all_labels.max())
    if all_labels.min() < 1:
        raise ValueError(f"{labels_path}: labels must be 1-based class numbers, got {all_labels.min()}")
    class_names = [f"flower_{k:03d}" for k in range(1, num_classes + 1)]
    paths = [folder / "jpg" / f"image_{n:05d}.jpg" for n in image_numbers.tolist()]
    labels = (all_labels[image_numbers - 1] - 1).tolist()
    return ImageFileDataset(paths, labels, class_names, image_size=image_size, transform=transform)
