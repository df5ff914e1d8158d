"""CIFAR-10-C and CIFAR-100-C as published (Hendrycks & Dietterich, ICLR 2019), read lazily.

Layout (as unpacked from the Zenodo archives)::

    CIFAR-10-C/   labels.npy, gaussian_noise.npy, shot_noise.npy, … (one file per corruption)
    CIFAR-100-C/  the same names

Each corruption file is a NumPy array, uint8, of shape (5·N)×32×32×3: the N test images corrupted at
severity 1, then the same N at severity 2, …, severity 5 (N = 10 000). ``labels.npy`` holds the 5·N labels
(the N test labels repeated five times; a file of N labels loads too). The archives hold 19 corruptions:
the 15 of the benchmark (:data:`BENCHMARK_CORRUPTIONS`) and 4 extra ones (:data:`EXTRA_CORRUPTIONS`);
GuidedMixup's Table 4 averages over all 19. The loader takes whatever ``<name>.npy`` files are present
(so a subset works) and names them.

Checksums. The archives' MD5s are those Zenodo lists for the two records (record 2535967, ``CIFAR-10-C.tar``,
2 918 471 680 bytes, MD5 ``56bf5dcef84df0e2308c6dcbcbbd8499``; record 3555552, ``CIFAR-100-C.tar``,
2 918 473 216 bytes, MD5 ``11f0ed0f1191edbf9fa23466ae6021d3``); :func:`load_cifar_c` with ``download=True``
refuses any other bytes. The record lists no checksum per ``.npy`` file, so local files are checked for
their layout instead (dtype, shape, a multiple of 5 images, labels of the right count and range) — when the
set is opened, every file, so a truncated or foreign file raises ``ValueError`` naming it before anything is
evaluated.
"""

from __future__ import annotations

import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .download import download_and_extract

PathLike = Union[str, os.PathLike]

#: the 15 corruptions of the benchmark (Hendrycks & Dietterich 2019, Figure 1), in its order
BENCHMARK_CORRUPTIONS: Tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
#: the 4 held-out corruptions the archives add (the paper's appendix)
EXTRA_CORRUPTIONS: Tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: Tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS

SEVERITIES = 5


@dataclass(frozen=True)
class CorruptedSpec:
    """One published corrupted set: its name, folder, Zenodo URL, archive MD5 and size, class count."""
    name: str
    folder: str
    url: str
    archive: str
    archive_md5: str
    archive_bytes: int
    num_classes: int


CIFAR10_C = CorruptedSpec("CIFAR-10-C", "CIFAR-10-C", "https://zenodo.org/records/2535967/files/CIFAR-10-C.tar",
                          "CIFAR-10-C.tar", "56bf5dcef84df0e2308c6dcbcbbd8499", 2_918_471_680, 10)
CIFAR100_C = CorruptedSpec("CIFAR-100-C", "CIFAR-100-C", "https://zenodo.org/records/3555552/files/CIFAR-100-C.tar",
                           "CIFAR-100-C.tar", "11f0ed0f1191edbf9fa23466ae6021d3", 2_918_473_216, 100)

#: the sets by the name ``keepmix eval --corruptions`` takes
CORRUPTED_SETS: Dict[str, CorruptedSpec] = {"cifar10-c": CIFAR10_C, "cifar100-c": CIFAR100_C}

_NAME = re.compile(r"^[a-z0-9_]+$")


class CorruptedSet:
    """A folder of published corruption files, read one corruption at a time (memory-mapped).

    Attributes:
        folder: the folder holding ``labels.npy`` and the ``<corruption>.npy`` files.
        corruptions: the names present, the benchmark's order first, then others alphabetically.
        labels: int64 N, the test labels (severity 1's block of ``labels.npy``).
        severities: 5.
        num_classes: K of the set.
    """

    def __init__(self, folder: PathLike, num_classes: int, name: str = "corrupted set",
                 corruptions: Optional[Sequence[str]] = None):
        self.folder = Path(folder)
        self.name = name
        self.num_classes = int(num_classes)
        self.severities = SEVERITIES
        labels_path = self.folder / "labels.npy"
        if not labels_path.is_file():
            raise FileNotFoundError(f"{name}: {labels_path} does not exist")
        labels = self._read(labels_path)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{name}: {labels_path} must hold a 1-d integer array, got {labels.dtype} {labels.shape}")
        found = sorted(p.stem for p in self.folder.glob("*.npy") if p.stem != "labels" and _NAME.match(p.stem))
        if corruptions is not None:
            if isinstance(corruptions, (str, bytes)) or not all(isinstance(c, str) for c in corruptions):
                raise TypeError(f"corruptions must be a list of names, e.g. ['fog'], got {corruptions!r}")
            if len(set(corruptions)) != len(corruptions) or not corruptions:
                raise ValueError(f"corruptions must list distinct names, at least one (or be None: all present), "
                                 f"got {list(corruptions)}")
            missing = [c for c in corruptions if c not in found]
            if missing:
                raise FileNotFoundError(f"{name}: no file for {', '.join(missing)} in {self.folder} "
                                        f"(present: {', '.join(found) or 'none'})")
            found = list(corruptions)
        if not found:
            raise FileNotFoundError(f"{name}: no corruption files (<name>.npy) in {self.folder}")
        order = {c: i for i, c in enumerate(ALL_CORRUPTIONS)}
        self.corruptions: List[str] = sorted(found, key=lambda c: (order.get(c, len(order)), c))
        first = self._images_array(self.corruptions[0])
        total = first.shape[0]
        if total % SEVERITIES:
            raise ValueError(f"{name}: {self.corruptions[0]}.npy holds {total} images, not a multiple of "
                             f"{SEVERITIES} severities")
        self.per_severity = total // SEVERITIES
        if self.per_severity == 0:
            raise ValueError(f"{name}: {self.corruptions[0]}.npy holds no images")
        if labels.shape[0] == total:
            blocks = labels.reshape(SEVERITIES, self.per_severity)
            if not (blocks == blocks[:1]).all():
                raise ValueError(f"{name}: {labels_path} does not repeat one block of labels per severity")
            labels = blocks[0]
        elif labels.shape[0] != self.per_severity:
            raise ValueError(f"{name}: {labels_path} holds {labels.shape[0]} labels, expected {total} "
                             f"(or {self.per_severity})")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"{name}: labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        self.labels = torch.from_numpy(np.array(labels, dtype=np.int64))
        for corruption in self.corruptions[1:]:  # every file's header and size now (memory-mapped: no pixels read),
            self._images_array(corruption)        # not after an evaluation has spent its time on the others

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except Exception as error:  # truncated header, pickled object arrays, not an .npy file
            raise ValueError(f"{path} could not be read as a NumPy array: it is truncated or not an .npy "
                             f"file ({type(error).__name__}: {error})") from error

    def _images_array(self, corruption: str) -> np.ndarray:
        if corruption not in getattr(self, "corruptions", [corruption]):
            raise ValueError(f"corruption must be one of those of {self.name}: {', '.join(self.corruptions)}; "
                             f"got {corruption!r}")
        path = self.folder / f"{corruption}.npy"
        array = self._read(path)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[3] != 3:
            raise ValueError(f"{self.name}: {path} must be a uint8 array (5·N)×H×W×3, got {array.dtype} "
                             f"{tuple(array.shape)}")
        if hasattr(self, "per_severity") and array.shape[0] != SEVERITIES * self.per_severity:
            raise ValueError(f"{self.name}: {path} holds {array.shape[0]} images, expected "
                             f"{SEVERITIES * self.per_severity} (5 severities × {self.per_severity})")
        return array

    def images(self, corruption: str, severity: Optional[int] = None) -> torch.Tensor:
        """uint8 images N×3×H×W of one severity (1–5), or all five stacked 5×N×3×H×W (``severity=None``)."""
        array = self._images_array(corruption)
        n = self.per_severity
        if severity is None:
            block = np.array(array)  # a writable in-memory copy of the memory-mapped file
            return torch.from_numpy(block.reshape(SEVERITIES, n, *block.shape[1:])).permute(0, 1, 4, 2, 3).contiguous()
        if isinstance(severity, bool) or not isinstance(severity, numbers.Integral):
            raise TypeError(f"severity must be an int in 1–{SEVERITIES} (or None: all), got {severity!r}")
        severity = int(severity)
        if not 1 <= severity <= SEVERITIES:
            raise ValueError(f"severity must be an int in 1–{SEVERITIES}, got {severity!r}")
        block = np.array(array[(severity - 1) * n:severity * n])
        return torch.from_numpy(block).permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return (f"CorruptedSet({self.name}, {len(self.corruptions)} corruptions × {self.severities} severities × "
                f"{self.per_severity} images, folder={str(self.folder)!r})")


def resolve_corrupted_folder(root: PathLike, spec: CorruptedSpec) -> Path:
    """``root/<CIFAR-10-C|CIFAR-100-C>`` or ``root`` itself, whichever holds ``labels.npy``."""
    root = Path(root).expanduser()
    for candidate in (root / spec.folder, root):
        if (candidate / "labels.npy").is_file():
            other = [s.name for s in CORRUPTED_SETS.values() if s is not spec and candidate.name == s.folder]
            if other:  # CIFAR-10-C/ opened as CIFAR-100-C: its labels would pass the range check
                raise ValueError(f"{candidate} holds {other[0]}, not {spec.name}")
            return candidate
    raise FileNotFoundError(f"no {spec.name} files under {root}: expected {root / spec.folder} or {root} to hold "
                            f"labels.npy and <corruption>.npy files (pass download=True to fetch the "
                            f"{spec.archive_bytes / 1e9:.1f} GB archive from {spec.url})")


def load_cifar_c(root: PathLike, name: str = "cifar10-c", *, download: bool = False,
                 corruptions: Optional[Sequence[str]] = None) -> CorruptedSet:
    """Open CIFAR-10-C (``name="cifar10-c"``) or CIFAR-100-C (``"cifar100-c"``) under ``root``.

    Args:
        root: a folder holding ``CIFAR-10-C/`` (``CIFAR-100-C/``), or that folder itself.
        name: ``"cifar10-c"`` or ``"cifar100-c"``.
        download: fetch ``CIFAR-*-C.tar`` from Zenodo into ``root`` when the files are not there; the
            archive's MD5 must be the one Zenodo publishes (:class:`~keepmix.data.download.ChecksumError`
            otherwise), then it is unpacked (≈ 2.9 GB, and as much again unpacked).
        corruptions: names to require (default: every ``<name>.npy`` present).

    Returns:
        A :class:`CorruptedSet`.
    """
    if not isinstance(name, str) or name.lower() not in CORRUPTED_SETS:
        raise ValueError(f"name must be one of {', '.join(CORRUPTED_SETS)}, got {name!r}")
    spec = CORRUPTED_SETS[name.lower()]
    if download:
        try:
            resolve_corrupted_folder(root, spec)
        except FileNotFoundError:
            download_and_extract(spec.url, root, md5=spec.archive_md5, filename=spec.archive)
    folder = resolve_corrupted_folder(root, spec)
    return CorruptedSet(folder, spec.num_classes, spec.name, corruptions)
