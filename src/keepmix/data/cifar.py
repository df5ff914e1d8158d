"""CIFAR-10 and CIFAR-100 in the official "python version" format.

Layout (as unpacked from the official tarballs)::

    cifar-10-batches-py/  data_batch_1 … data_batch_5, test_batch, batches.meta
    cifar-100-python/     train, test, meta

Each data file is a dict pickled by Python 2 (protocol 2, byte-string keys). Read with
``encoding="latin1"`` it holds ``data``, an N×3072 uint8 array whose rows are 1024 red, then
1024 green, then 1024 blue values of a 32×32 image in row-major order, and ``labels``
(CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100). Files written by Python 3 with
``str`` keys, or labels stored as arrays, load too.

Unpickling runs only a short allow-list of numpy reconstruction functions, so a hostile file
cannot execute code. Local files are checked against the published MD5s: a mismatch (a subset,
a re-pack) loads with a :class:`~keepmix.data.download.ChecksumWarning`, or raises
:class:`~keepmix.data.download.ChecksumError` when ``strict=True``. A truncated or corrupt file
raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .download import download_and_extract, verify_files

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class _CifarSpec:
    name: str
    folder: str
    url: str
    archive_md5: str
    train_files: Tuple[Tuple[str, str], ...]
    test_files: Tuple[Tuple[str, str], ...]
    meta_file: str
    num_classes: int


CIFAR10 = _CifarSpec(
    name="CIFAR-10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive_md5="c58f30108f718f92721af3b95e74349a",
    train_files=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                 ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                 ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                 ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                 ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
    test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
    meta_file="batches.meta",
    num_classes=10,
)

CIFAR100 = _CifarSpec(
    name="CIFAR-100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive_md5="eb9058c3a382ffc7106e288ac9d3c6ab",
    train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
    test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
    meta_file="meta",
    num_classes=100,
)

#: class names in label order (used when ``batches.meta`` is absent)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

#: the 20 CIFAR-100 superclasses have this many fine classes each
_CIFAR100_COARSE = 20


@dataclass
class TensorData:
    """An in-memory labelled image set.

    Attributes:
        images: uint8 N×3×H×W (0–255).
        labels: int64 N.
        class_names: list of K names, ``class_names[k]`` for label ``k``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: List[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------- safe unpickling

def _numpy_reconstruct():
    # numpy >= 2 moved the implementation to numpy._core; pickles name numpy.core (Python 2, numpy 1)
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise ImportError("numpy's multiarray module could not be imported")  # pragma: no cover


_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # Python 3 writes byte strings under protocol 2 through codecs.encode
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the few globals a numpy array pickle needs."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR data file")
        if module == "numpy":
            return getattr(np, name)
        if module == "_codecs":
            import codecs
            return codecs.encode
        return getattr(_numpy_reconstruct(), name)


def _text(value) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def read_cifar_pickle(path: PathLike) -> Dict[str, object]:
    """Unpickle one CIFAR file (Python-2 or Python-3 written) into a dict with ``str`` keys.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is truncated, corrupt or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file {path} does not exist")
    try:
        with open(path, "rb") as handle:
            content = _RestrictedUnpickler(handle, encoding="latin1").load()
    except Exception as error:  # unpickling fails in many ways (EOFError, UnpicklingError, ValueError…)
        raise ValueError(f"CIFAR file {path} could not be read: it is truncated or corrupt "
                         f"({type(error).__name__}: {error})") from error
    if not isinstance(content, dict):
        raise ValueError(f"CIFAR file {path} does not hold a dict (got {type(content).__name__})")
    return {_text(key): value for key, value in content.items()}


def _batch_arrays(content: Dict[str, object], path: Path, label_key: str,
                  num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    if "data" not in content:
        raise ValueError(f"CIFAR file {path} has no 'data' entry (keys: {sorted(content)})")
    if label_key not in content:
        raise ValueError(f"CIFAR file {path} has no {label_key!r} entry (keys: {sorted(content)})")
    data = content["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        described = (f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray)
                     else type(data).__name__)
        raise ValueError(f"CIFAR file {path}: 'data' must be an N×3072 uint8 array, got {described}")
    try:
        labels = np.asarray(content[label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"CIFAR file {path}: {label_key!r} is not a list of integers") from error
    if labels.shape[0] != data.shape[0]:
        raise ValueError(f"CIFAR file {path} holds {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"CIFAR file {path}: labels must lie in [0, {num_classes}), "
                         f"got [{labels.min()}, {labels.max()}]")
    return data, labels


def resolve_cifar_folder(root: PathLike, spec: _CifarSpec = CIFAR10) -> Path:
    """The folder holding the data files: ``root/<official folder>`` or ``root`` itself."""
    root = Path(root)
    marker = spec.test_files[0][0]
    for candidate in (root / spec.folder, root):
        if (candidate / marker).is_file() or (candidate / spec.train_files[0][0]).is_file():
            return candidate
    raise FileNotFoundError(f"no {spec.name} files under {root}: expected {root / spec.folder} or "
                            f"{root} to hold {', '.join(n for n, _ in spec.train_files + spec.test_files)} "
                            f"(pass download=True to fetch them)")


def _load_cifar(spec: _CifarSpec, root: PathLike, split: str, download: bool, strict: bool,
                label_key: str, num_classes: int, names_key: str,
                default_names: Optional[Tuple[str, ...]]) -> TensorData:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for {spec.name}, got {split!r}")
    root = Path(root)
    if download:
        try:
            resolve_cifar_folder(root, spec)
        except FileNotFoundError:
            download_and_extract(spec.url, root, md5=spec.archive_md5)
    folder = resolve_cifar_folder(root, spec)
    files = spec.train_files if split == "train" else spec.test_files
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{spec.name} {split} files missing from {folder}: {', '.join(missing)}")
    verify_files(folder, dict(files), strict=strict, what=spec.name)

    images, labels = [], []
    for name, _ in files:
        data, batch_labels = _batch_arrays(read_cifar_pickle(folder / name), folder / name, label_key, num_classes)
        images.append(data)
        labels.append(batch_labels)
    data = np.concatenate(images, axis=0) if len(images) > 1 else np.array(images[0], copy=True)
    # rows are 1024 R, 1024 G, 1024 B values in row-major order: a plain reshape gives N×3×32×32
    image_tensor = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    label_tensor = torch.from_numpy(np.concatenate(labels)).to(torch.int64)

    class_names = None
    meta_path = folder / spec.meta_file
    if meta_path.is_file():
        meta = read_cifar_pickle(meta_path)
        if names_key in meta and len(meta[names_key]) == num_classes:
            class_names = [_text(n) for n in meta[names_key]]
    if class_names is None:
        class_names = list(default_names) if default_names is not None else [f"class_{k}" for k in range(num_classes)]
    return TensorData(image_tensor, label_tensor, class_names)


def load_cifar10(root: PathLike, split: str = "train", *, download: bool = False,
                 strict: bool = False) -> TensorData:
    """Load CIFAR-10 (``split`` ``"train"``: 5 batches, ``"test"``: ``test_batch``).

    Args:
        root: a folder holding ``cifar-10-batches-py/``, or that folder itself.
        split: ``"train"`` or ``"test"``.
        download: fetch and unpack the official tarball (MD5-verified) into ``root`` if the
            files are not there.
        strict: raise :class:`ChecksumError` instead of warning when a file's MD5 differs from
            the published one.

    Returns:
        :class:`TensorData` with uint8 N×3×32×32 images, int64 labels and the class names.
    """
    return _load_cifar(CIFAR10, root, split, download, strict, "labels", 10, "label_names", CIFAR10_CLASSES)


def load_cifar100(root: PathLike, split: str = "train", *, download: bool = False, strict: bool = False,
                  label_type: str = "fine") -> TensorData:
    """Load CIFAR-100; ``label_type`` ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).

    Other arguments as :func:`load_cifar10`; ``root`` holds ``cifar-100-python/`` or is that folder.
    """
    if label_type not in ("fine", "coarse"):
        raise ValueError(f"label_type must be 'fine' or 'coarse', got {label_type!r}")
    count = 100 if label_type == "fine" else _CIFAR100_COARSE
    return _load_cifar(CIFAR100, root, split, download, strict, f"{label_type}_labels", count,
                       f"{label_type}_label_names", None)
