"""Tiny-ImageNet (200 classes, 64×64) from its official layout.

::

    tiny-imagenet-200/
      wnids.txt                      one WordNet id per line (the 200 classes)
      words.txt                      "<wnid>\\t<synonyms, comma separated>" (all of WordNet)
      train/<wnid>/images/*.JPEG     500 images per class
      val/images/*.JPEG              10 000 images
      val/val_annotations.txt        "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"

Labels index the wnids in **sorted** order, the order an ImageFolder over ``train/`` gives, so
label k is the same class as in checkpoints trained that way. The test split has no public
labels: ``split="test"`` is an alias of ``"val"``, the split papers report as the test set.
A ``val/`` already re-sorted into ``val/<wnid>/[images/]*.JPEG`` folders is accepted too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Union

from .images import ImageFileDataset, is_image_file, require_pillow

PathLike = Union[str, os.PathLike]

FOLDER = "tiny-imagenet-200"


def _read_lines(path: Path) -> List[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, "r", encoding="utf-8") as handle:
        return [line.rstrip("\r\n") for line in handle if line.strip()]


def resolve_tiny_imagenet(root: PathLike) -> Path:
    root = Path(root)
    for candidate in (root, root / FOLDER):
        if (candidate / "wnids.txt").is_file():
            return candidate
    raise FileNotFoundError(f"no Tiny-ImageNet under {root}: expected {root}/wnids.txt or "
                            f"{root}/{FOLDER}/wnids.txt")


def _images_in(folder: Path) -> List[Path]:
    source = folder / "images" if (folder / "images").is_dir() else folder
    return sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))


def tiny_imagenet(root: PathLike, split: str = "train", *, image_size=None, transform=None) -> ImageFileDataset:
    """Tiny-ImageNet ``split`` (``"train"``, ``"val"``, or ``"test"`` = ``"val"``) as an ImageFileDataset.

    Class names are the first synonym from ``words.txt`` (the wnid when it is absent).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test' (= 'val') for Tiny-ImageNet, got {split!r}")
    require_pillow()
    folder = resolve_tiny_imagenet(root)
    wnids = sorted({line.strip() for line in _read_lines(folder / "wnids.txt")})
    index: Dict[str, int] = {w: k for k, w in enumerate(wnids)}
    names: Dict[str, str] = {}
    if (folder / "words.txt").is_file():
        for line in _read_lines(folder / "words.txt"):
            wnid, _, words = line.partition("\t")
            if wnid in index:
                names[wnid] = words.split(",")[0].strip() or wnid
    class_names = [names.get(w, w) for w in wnids]

    paths: List[Path] = []
    labels: List[int] = []
    if split == "train":
        for wnid in wnids:
            class_folder = folder / "train" / wnid
            if not class_folder.is_dir():
                raise FileNotFoundError(f"Tiny-ImageNet class folder {class_folder} does not exist")
            files = _images_in(class_folder)
            if not files:
                raise ValueError(f"Tiny-ImageNet class folder {class_folder} holds no images")
            paths.extend(files)
            labels.extend([index[wnid]] * len(files))
    else:
        val = folder / "val"
        annotations = val / "val_annotations.txt"
        if annotations.is_file():
            for number, line in enumerate(_read_lines(annotations), start=1):
                fields = line.split("\t")
                if len(fields) < 2:
                    raise ValueError(f"{annotations} line {number} is not '<file>\\t<wnid>…': {line!r}")
                file_name, wnid = fields[0].strip(), fields[1].strip()
                if wnid not in index:
                    raise ValueError(f"{annotations} line {number} names {wnid!r}, which is not in wnids.txt")
                path = val / "images" / file_name
                if not path.is_file():
                    raise FileNotFoundError(f"{annotations} line {number} lists {path}, which does not exist")
                paths.append(path)
                labels.append(index[wnid])
        else:
            present = [w for w in wnids if (val / w).is_dir()]
            if not present:
                raise FileNotFoundError(f"Tiny-ImageNet validation labels missing: expected {annotations} "
                                        f"or folders {val}/<wnid>/")
            for wnid in present:
                files = _images_in(val / wnid)
                paths.extend(files)
                labels.extend([index[wnid]] * len(files))
    return ImageFileDataset(paths, labels, class_names, image_size=image_size, transform=transform)
