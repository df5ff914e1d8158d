"""Sharded tar files in WebDataset's format: writing them from an ImageFolder, reading them by random access.

**The format** (WebDataset's): plain (uncompressed) POSIX tar files ``<split>-000000.tar``,
``<split>-000001.tar``…; each sample is consecutive members sharing a key — ``<key>.jpg`` (or
``.png``…, the original file's bytes, not re-encoded) and ``<key>.cls`` (the class index as ASCII
digits). keepmix also writes ``classes.txt`` (one class name per line, line k = label k) beside the
shards. Shards written here are read by ``webdataset``/``wids`` unchanged.

**Making shards from an ImageFolder**::

    python -m keepmix.data.shards ~/data/imagenet ~/data/imagenet-shards --split train --per-shard 1000
    python -m keepmix.data.shards ~/data/imagenet ~/data/imagenet-shards --split val --per-shard 1000

(or :func:`write_shards` from Python), then train with ``data: {name: shards, root: ~/data/imagenet-shards}``.
``--shuffle SEED`` writes the samples in a seeded random order (what sequential WebDataset readers
want; keepmix itself does not need it).

**Reading** (:class:`TarShardDataset`, ``load_dataset("shards", root, split)``): the tar headers
are scanned once (no image data is read), then each sample is one ``os.pread`` of its bytes and a
Pillow decode — a map-style data set, so the streaming path's sampler, per-sample seeds, DDP shares
and exact mid-epoch resume work on shards exactly as on files. Only the standard library and Pillow
are needed; the ``webdataset`` package is not.
"""

from __future__ import annotations

import argparse
import io
import os
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import Dataset

from .._checks import check_size
from .images import IMAGE_EXTENSIONS, ImageFileDataset, image_folder, open_rgb, resize_image
from .transforms import pil_to_tensor

PathLike = Union[str, os.PathLike]

__all__ = ["write_shards", "TarShardDataset", "tar_shards", "shard_paths", "CLASSES_NAME"]

#: the class-name file written beside the shards
CLASSES_NAME = "classes.txt"
_IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


def shard_paths(root: PathLike, split: Optional[str]) -> List[Path]:
    """The shards of ``split`` under ``root`` (``<split>-*.tar``, or every ``*.tar`` when split is None), sorted."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"shard folder {root} does not exist")
    pattern = f"{split}-*.tar" if split else "*.tar"
    paths = sorted(root.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no shards {pattern} in {root} (make them with: python -m keepmix.data.shards "
                                f"IMAGE_FOLDER {root} --split {split or 'train'})")
    return paths


def write_shards(source: Union[PathLike, ImageFileDataset], out_dir: PathLike, split: Optional[str] = "train", *,
                 per_shard: int = 1000, shuffle: Optional[int] = None) -> List[Path]:
    """Write the images of an ImageFolder (``source/<split>/<class>/…``, or an ImageFileDataset) as tar shards.

    Each sample's original file bytes go in as ``<key>.<ext>`` with ``<key>.cls`` its label; the key
    is the sample's index in the source (9 digits). ``per_shard`` samples per shard; ``shuffle``: a
    seed for a random sample order (None: the source's order). ``classes.txt`` is written (or
    checked to agree when it exists). Returns the shard paths.
    """
    if isinstance(per_shard, bool) or not isinstance(per_shard, int) or per_shard < 1:
        raise ValueError(f"per_shard must be a positive int, got {per_shard!r}")
    dataset = source if isinstance(source, ImageFileDataset) else image_folder(Path(source).expanduser(), split)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    classes = out / CLASSES_NAME
    text = "".join(f"{name}\n" for name in dataset.class_names)
    if classes.exists() and classes.read_text(encoding="utf-8") != text:
        raise ValueError(f"{classes} lists other classes than {source}: write the shards of different sets "
                         "to different folders")
    classes.write_text(text, encoding="utf-8")
    order = list(range(len(dataset)))
    if shuffle is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(int(shuffle))).tolist()
    prefix = f"{split}-" if split else "shard-"
    written: List[Path] = []
    for number, start in enumerate(range(0, len(order), per_shard)):
        path = out / f"{prefix}{number:06d}.tar"
        partial = path.with_name(path.name + ".partial")
        with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
            for index in order[start:start + per_shard]:
                file = dataset.paths[index]
                key = f"{index:09d}"
                ext = file.suffix.lower().lstrip(".") or "jpg"
                _add(tar, f"{key}.{ext}", file.read_bytes())
                _add(tar, f"{key}.cls", str(int(dataset.targets[index])).encode())
        os.replace(partial, path)
        written.append(path)
    return written


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class TarShardDataset(Dataset):
    """``(uint8 3×H×W, int label)`` samples of WebDataset-format tar shards, read by random access.

    Args:
        shards: the tar files (in order: sample k of the set is the k-th sample met reading them in order).
        class_names: the class names (default: ``classes.txt`` beside the first shard, else ``class_0``…).

    Attributes: ``targets`` (int64 N, read from the ``.cls`` members when the index is built),
    ``class_names``, ``num_classes``, ``keys`` (each sample's key), ``image_size`` (``image_size=`` resizes
    every item, for the in-memory path; None keeps native sizes).
    :meth:`open_image` decodes a sample as a PIL image (the streaming path's input).
    """

    def __init__(self, shards: Sequence[PathLike], class_names: Optional[Sequence[str]] = None, *,
                 image_size=None):
        self.shards: List[Path] = [Path(p) for p in shards]
        if not self.shards:
            raise ValueError("shards must name at least one tar file")
        entries: List[Tuple[int, int, int, str]] = []   # (shard, offset, size, member name)
        labels: List[int] = []
        self.keys: List[str] = []
        for number, path in enumerate(self.shards):
            for key, image, label in _scan(path):
                entries.append((number, image[0], image[1], f"{path.name}:{image[2]}"))
                labels.append(label)
                self.keys.append(key)
        if not entries:
            raise ValueError(f"the shards hold no samples: {', '.join(str(p) for p in self.shards[:3])}")
        self._entries = entries
        self.targets = torch.tensor(labels, dtype=torch.int64)
        if class_names is None:
            listing = self.shards[0].parent / CLASSES_NAME
            if listing.is_file():
                class_names = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()
                               if line.strip()]
            else:
                class_names = [f"class_{k}" for k in range(int(self.targets.max()) + 1)]
        self.class_names = [str(n) for n in class_names]
        if int(self.targets.min()) < 0 or int(self.targets.max()) >= len(self.class_names):
            raise ValueError(f"shard labels must lie in [0, {len(self.class_names)}), got "
                             f"[{int(self.targets.min())}, {int(self.targets.max())}]")
        self.image_size: Optional[Tuple[int, int]] = None if image_size is None else check_size(image_size,
                                                                                             "image_size")
        self._fds: Dict[int, Tuple[int, int]] = {}  # shard → (pid, file descriptor), reopened in each process

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self):  # descriptors never travel to worker processes
        state = dict(self.__dict__)
        state["_fds"] = {}
        return state

    def _fd(self, shard: int) -> int:
        pid = os.getpid()
        held = self._fds.get(shard)
        if held is None or held[0] != pid:
            self._fds[shard] = (pid, os.open(self.shards[shard], os.O_RDONLY))
        return self._fds[shard][1]

    def read_bytes(self, index: int) -> bytes:
        """The stored image file's bytes of sample ``index``."""
        shard, offset, size, _ = self._entries[index]
        data = os.pread(self._fd(shard), size, offset)
        if len(data) != size:
            raise ValueError(f"{self.shards[shard]} is shorter than its index says (sample {index})")
        return data

    def open_image(self, index: int):
        """Sample ``index`` as an RGB PIL image at its native size."""
        return open_rgb(io.BytesIO(self.read_bytes(index)), what=self._entries[index][3])

    def __getitem__(self, index: int):
        image = pil_to_tensor(self.open_image(index))
        if self.image_size is not None:
            image = resize_image(image, self.image_size)
        return image, int(self.targets[index])

    def to_tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode every sample into one uint8 N×3×h×w tensor (needs ``image_size``) and the labels (the
        in-memory path)."""
        if self.image_size is None:
            raise ValueError("to_tensors needs image_size so that all images share one size")
        images = torch.empty((len(self), 3, *self.image_size), dtype=torch.uint8)
        for index in range(len(self)):
            images[index] = self[index][0]
        return images, self.targets.clone()

    def __del__(self):
        for pid, fd in getattr(self, "_fds", {}).values():
            if pid == os.getpid():
                try:
                    os.close(fd)
                except OSError:
                    pass


def tar_shards(root: PathLike, split: Optional[str] = "train", *, image_size=None, transform=None) -> TarShardDataset:
    """The shards ``root/<split>-*.tar`` as a :class:`TarShardDataset` (``load_dataset("shards", root, split)``).
    ``transform`` is not supported (the streaming path crops in its workers)."""
    if transform is not None:
        raise ValueError("the 'shards' data set takes no transform")
    return TarShardDataset(shard_paths(root, split), image_size=image_size)


def _scan(path: Path):
    """``(key, (offset, size, member name), label)`` of every sample in a shard (headers and ``.cls`` members)."""
    samples: Dict[str, Dict[str, object]] = {}
    order: List[str] = []
    with tarfile.open(path, "r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = member.name.rsplit("/", 1)[-1]
            key, dot, ext = base.partition(".")
            if not dot:
                continue
            directory = member.name[:len(member.name) - len(base)]
            key = directory + key
            entry = samples.get(key)
            if entry is None:
                entry = samples[key] = {}
                order.append(key)
            ext = ext.lower()
            if ext == "cls":
                handle = tar.extractfile(member)
                raw = handle.read().decode("ascii", "replace").strip() if handle is not None else ""
                try:
                    entry["cls"] = int(raw)
                except ValueError:
                    raise ValueError(f"{path}: {member.name} holds {raw!r}, not a class index") from None
            elif ext in _IMAGE_SUFFIXES and "image" not in entry:
                entry["image"] = (member.offset_data, member.size, member.name)
    for key in order:
        entry = samples[key]
        if "image" not in entry and "cls" not in entry:
            continue
        if "image" not in entry or "cls" not in entry:
            raise ValueError(f"{path}: sample {key!r} lacks an image or a .cls label "
                             f"(members: {', '.join(sorted(k for k in entry))})")
        yield key, entry["image"], entry["cls"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keepmix.data.shards",
                                     description="Write an ImageFolder split as WebDataset-format tar shards.")
    parser.add_argument("source", help="the ImageFolder root (holding <split>/<class>/<image>)")
    parser.add_argument("out", help="folder for the shards and classes.txt")
    parser.add_argument("--split", default="train", help="split folder under source (default train); "
                        "'none' reads source/<class>/<image>")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard (default 1000)")
    parser.add_argument("--shuffle", type=int, default=None, metavar="SEED", help="write in a seeded random order")
    args = parser.parse_args(argv)
    split = None if args.split.lower() == "none" else args.split
    paths = write_shards(args.source, args.out, split, per_shard=args.per_shard, shuffle=args.shuffle)
    print(f"wrote {len(paths)} shard(s) to {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
