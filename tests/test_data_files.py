"""File-backed sets: Tiny-ImageNet, ImageFolder, CUB, Cars, Aircraft, Caltech-101, Flowers-102.

Each test writes a miniature tree in the published layout. Most images are constant-colour
PNGs whose colour encodes (class, index), so decoded pixels can be checked exactly; the
Tiny-ImageNet tree uses real JPEGs (checked to within JPEG error).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from keepmix.data import (ImageFileDataset, caltech101, cub200, fgvc_aircraft, flowers102, image_folder,
                          load_dataset, make_dataloader, stanford_cars, tiny_imagenet)

try:
    from PIL import Image
except ImportError:  # Pillow is optional: only the "missing Pillow" test runs without it
    Image = None

needs_pillow = pytest.mark.skipif(Image is None, reason="Pillow is not installed (pip install pillow)")

IMAGENET_MEAN = (0.485, 0.456, 0.406)


def colour_of(label: int, index: int):
    return (40 * label + 10, 5 * index + 3, 200)


def write_image(path: Path, colour, size=(6, 5), fmt="PNG"):
    """A constant-colour RGB image of (height, width) ``size``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.empty((size[0], size[1], 3), dtype=np.uint8)
    array[...] = colour
    Image.fromarray(array).save(path, format=fmt)


def assert_colour(image: torch.Tensor, colour, tolerance: int = 0):
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    expected = torch.tensor(colour, dtype=torch.int16).view(3, 1, 1)
    assert int((image.to(torch.int16) - expected).abs().max()) <= tolerance


# --------------------------------------------------------------------------- Tiny-ImageNet

def make_tiny_imagenet(root: Path):
    wnids = ["n0300", "n0100", "n0200"]  # deliberately unsorted: labels follow sorted order
    folder = root / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n0100\tgoldfish, Carassius auratus\nn0200\tsalamander\n"
                                      "n0300\ttabby, tabby cat\nn9999\tunused entry\n")
    for wnid in wnids:
        label = sorted(wnids).index(wnid)
        for index in range(2):
            write_image(folder / "train" / wnid / "images" / f"{wnid}_{index}.JPEG", colour_of(label, index),
                        size=(16, 16), fmt="JPEG")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    rows = []
    for index, wnid in enumerate(["n0200", "n0300", "n0100", "n0200"]):
        name = f"val_{index}.JPEG"
        write_image(folder / "val" / "images" / name, colour_of(sorted(wnids).index(wnid), index), size=(16, 16),
                    fmt="JPEG")
        rows.append(f"{name}\t{wnid}\t0\t0\t10\t10")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return folder


@needs_pillow
def test_tiny_imagenet_train_and_val(tmp_path):
    make_tiny_imagenet(tmp_path)
    train = tiny_imagenet(tmp_path, "train")
    assert train.class_names == ["goldfish", "salamander", "tabby"]
    assert train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    for i in range(len(train)):
        image, label = train[i]
        assert label == int(train.targets[i]) and image.shape == (3, 16, 16)
        assert_colour(image, colour_of(label, int(train.paths[i].stem[-1])), tolerance=4)
    val = tiny_imagenet(tmp_path / "tiny-imagenet-200", "val")
    assert val.targets.tolist() == [1, 2, 0, 1]
    assert_colour(val[2][0], colour_of(0, 2), tolerance=4)
    assert tiny_imagenet(tmp_path, "test").targets.tolist() == [1, 2, 0, 1]  # test = val (no public labels)
    with pytest.raises(ValueError, match="split"):
        tiny_imagenet(tmp_path, "holdout")


@needs_pillow
def test_tiny_imagenet_errors_and_resorted_val(tmp_path):
    folder = make_tiny_imagenet(tmp_path)
    annotations = folder / "val" / "val_annotations.txt"
    annotations.write_text("val_0.JPEG\tn0400\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match="n0400"):
        tiny_imagenet(tmp_path, "val")
    annotations.write_text("missing.JPEG\tn0100\t0\t0\t1\t1\n")
    with pytest.raises(FileNotFoundError, match="missing.JPEG"):
        tiny_imagenet(tmp_path, "val")
    annotations.unlink()  # a val/ re-sorted into val/<wnid>/images/ folders
    write_image(folder / "val" / "n0300" / "images" / "a.JPEG", colour_of(2, 0), size=(16, 16), fmt="JPEG")
    assert tiny_imagenet(tmp_path, "val").targets.tolist() == [2]
    with pytest.raises(FileNotFoundError, match="wnids.txt"):
        tiny_imagenet(tmp_path / "nowhere", "train")


@needs_pillow
def test_tiny_imagenet_through_load_dataset_and_dataloader(tmp_path):
    make_tiny_imagenet(tmp_path)
    data = load_dataset("tiny-imagenet", tmp_path, "train", image_size=8)
    assert not data.in_memory and data.images is None and data.image_size == (8, 8)
    assert data.num_classes == 3 and data.mean == IMAGENET_MEAN and len(data) == 6
    batches = list(make_dataloader(data.dataset, batch_size=4, shuffle=False))
    images, labels = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 0, 1, 1]
    assert_colour(images[2], colour_of(1, 0), tolerance=4)  # resizing a constant image keeps it
    tensors, labels = data.dataset.to_tensors()
    assert tensors.shape == (6, 3, 8, 8) and torch.equal(tensors[:4], images)


# --------------------------------------------------------------------------- ImageFolder

@needs_pillow
def test_image_folder_labels_paths_and_splits(tmp_path):
    for split, classes in (("train", ["cat", "ant", "bee"]), ("test", ["bee", "cat"])):
        for name in classes:
            for index in range(2):
                label = ["ant", "bee", "cat"].index(name)
                write_image(tmp_path / split / name / f"{index}.png", colour_of(label, index))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "ant" / ".hidden.png").write_bytes(b"")
    train = image_folder(tmp_path, "train")
    assert train.class_names == ["ant", "bee", "cat"] and train.targets.tolist() == [0, 0, 1, 1, 2, 2]
    test = image_folder(tmp_path, "test")  # lacks "ant": labels still index the union of classes
    assert test.class_names == ["ant", "bee", "cat"] and test.targets.tolist() == [1, 1, 2, 2]
    for dataset in (train, test):
        for i in range(len(dataset)):
            image, label = dataset[i]
            assert_colour(image, colour_of(label, int(dataset.paths[i].stem)))
    flat = image_folder(tmp_path / "train")
    assert flat.targets.tolist() == train.targets.tolist()
    assert load_dataset("image_folder", tmp_path, "test").labels.tolist() == [1, 1, 2, 2]
    assert load_dataset("imagefolder", tmp_path / "train", None).labels.tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(FileNotFoundError, match="split"):
        image_folder(tmp_path, "val")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_folder(tmp_path / "train")


@needs_pillow
def test_image_file_dataset_validation_and_transform(tmp_path):
    write_image(tmp_path / "a.png", (1, 2, 3), size=(4, 6))
    with pytest.raises(ValueError, match="one entry per path"):
        ImageFileDataset([tmp_path / "a.png"], [0, 1], ["x", "y"])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        ImageFileDataset([tmp_path / "a.png"], [2], ["x", "y"])
    native = ImageFileDataset([tmp_path / "a.png"], [1], ["x", "y"])
    assert native[0][0].shape == (3, 4, 6) and native[0][1] == 1
    with pytest.raises(ValueError, match="image_size"):
        native.to_tensors()
    flipped = ImageFileDataset([tmp_path / "a.png"], [0], ["x"], image_size=(2, 3), transform=lambda x: 255 - x)
    assert_colour(flipped[0][0], (254, 253, 252))
    assert flipped[0][0].shape == (3, 2, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFileDataset([tmp_path / "broken.png"], [0], ["x"])[0]


def test_missing_pillow_gives_an_install_hint(tmp_path, monkeypatch):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.png").write_bytes(b"never decoded")
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        image_folder(tmp_path)


# --------------------------------------------------------------------------- CUB-200-2011

@needs_pillow
def test_cub200_split_and_labels(tmp_path):
    folder = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    (folder).mkdir()
    (folder / "classes.txt").write_text("".join(f"{k + 1} {c}\n" for k, c in enumerate(classes)))
    rows, labels, split = [], [], []
    for image_id in range(1, 10):
        class_number = (image_id - 1) % 3 + 1
        path = f"{classes[class_number - 1]}/img_{image_id}.jpg"
        write_image(folder / "images" / path, colour_of(class_number - 1, image_id))
        rows.append(f"{image_id} {path}")
        labels.append(f"{image_id} {class_number}")
        split.append(f"{image_id} {1 if image_id <= 6 else 0}")
    (folder / "images.txt").write_text("\n".join(rows) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    train, test = cub200(tmp_path, "train"), cub200(folder, "test")
    assert train.class_names == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert train.targets.tolist() == [0, 1, 2, 0, 1, 2] and test.targets.tolist() == [0, 1, 2]
    assert_colour(test[1][0], colour_of(1, 8))
    data = load_dataset("cub200", tmp_path, "test", image_size=(3, 4))
    assert data.dataset[0][0].shape == (3, 3, 4) and data.std == (0.229, 0.224, 0.225)
    (folder / "image_class_labels.txt").write_text("1 4\n")
    with pytest.raises(ValueError):
        cub200(tmp_path, "train")


# --------------------------------------------------------------------------- Stanford Cars

def _struct(rows):
    array = np.empty((1, len(rows)), dtype=[("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"),
                                            ("bbox_y2", "O"), ("class", "O"), ("fname", "O")])
    for i, (number, name) in enumerate(rows):
        array[0, i] = (np.array([[1]]), np.array([[1]]), np.array([[4]]), np.array([[4]]),
                       np.array([[number]], dtype=np.uint8), np.array([name]))
    return array


@needs_pillow
def test_stanford_cars_devkit_and_repack(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "cars"
    (root / "devkit").mkdir(parents=True)
    train_rows = [(2, "00001.jpg"), (1, "00002.jpg"), (3, "00003.jpg")]
    test_rows = [(3, "00001.jpg")]
    scipy_io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": _struct(train_rows)})
    scipy_io.savemat(root / "cars_test_annos_withlabels.mat", {"annotations": _struct(test_rows)})
    scipy_io.savemat(root / "devkit" / "cars_meta.mat",
                     {"class_names": np.array(["AM General Hummer", "Acura RL", "Audi R8"], dtype=object)[None]})
    for split, rows in (("train", train_rows), ("test", test_rows)):
        for index, (number, name) in enumerate(rows):
            write_image(root / f"cars_{split}" / name, colour_of(number - 1, index))
    train, test = stanford_cars(root, "train"), stanford_cars(root, "test")
    assert train.class_names == ["AM General Hummer", "Acura RL", "Audi R8"]
    assert train.targets.tolist() == [1, 0, 2] and test.targets.tolist() == [2]  # a single annotation works
    assert_colour(train[1][0], colour_of(0, 1))

    repack = tmp_path / "repack"
    write_image(repack / "train" / "Audi R8" / "a.png", colour_of(1, 0))
    write_image(repack / "train" / "Acura RL" / "b.png", colour_of(0, 0))
    assert load_dataset("cars", repack, "train").labels.tolist() == [0, 1]


@needs_pillow
def test_missing_scipy_gives_an_install_hint(tmp_path, monkeypatch):
    (tmp_path / "cars_train_annos.mat").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        stanford_cars(tmp_path, "train")


# --------------------------------------------------------------------------- FGVC-Aircraft

@needs_pillow
def test_fgvc_aircraft_variants_with_spaces(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    variants = ["707-320", "Cessna 172", "F-16A/B"]
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    listing = {"train": [("0001", "F-16A/B"), ("0002", "707-320")], "val": [("0003", "Cessna 172")],
               "trainval": [("0001", "F-16A/B"), ("0002", "707-320"), ("0003", "Cessna 172")]}
    for split, rows in listing.items():
        (data / f"images_variant_{split}.txt").write_text("".join(f"{i} {v}\n" for i, v in rows))
    for image_id, variant in listing["trainval"]:
        write_image(data / "images" / f"{image_id}.jpg", colour_of(variants.index(variant), int(image_id)))
    train = fgvc_aircraft(tmp_path, "train")
    assert train.class_names == variants and train.targets.tolist() == [2, 0]
    assert fgvc_aircraft(tmp_path, "trainval").targets.tolist() == [2, 0, 1]
    assert_colour(fgvc_aircraft(tmp_path, "val")[0][0], colour_of(1, 3))
    (data / "images_variant_test.txt").write_text("0004 Boeing 999\n")
    with pytest.raises(ValueError, match="Boeing 999"):
        fgvc_aircraft(tmp_path, "test")


# --------------------------------------------------------------------------- Caltech-101

def make_caltech(root: Path, counts=(("accordion", 10), ("Faces", 5), ("zebra", 7))):
    folder = root / "101_ObjectCategories"
    for name, count in counts:
        for index in range(count):
            write_image(folder / name / f"image_{index:04d}.jpg", (index, 0, 0), size=(2, 2))
    for index in range(3):
        write_image(folder / "BACKGROUND_Google" / f"image_{index:04d}.jpg", (0, 0, 0), size=(2, 2))


@needs_pillow
def test_caltech101_split_is_stratified_seeded_and_a_partition(tmp_path):
    make_caltech(tmp_path)
    train, test = caltech101(tmp_path, "train", split_seed=3), caltech101(tmp_path, "test", split_seed=3)
    assert train.class_names == ["Faces", "accordion", "zebra"]  # sorted, background dropped
    # per class round(0.2·n) test images: accordion 10 → 2, Faces 5 → 1, zebra 7 → 1
    assert torch.bincount(test.targets, minlength=3).tolist() == [1, 2, 1]
    assert torch.bincount(train.targets, minlength=3).tolist() == [4, 8, 6]
    train_paths, test_paths = set(train.paths), set(test.paths)
    assert not train_paths & test_paths and len(train_paths | test_paths) == 22
    assert all("BACKGROUND" not in str(p) for p in train_paths | test_paths)
    assert set(caltech101(tmp_path, "test", split_seed=3).paths) == test_paths  # same seed, same split
    other = {frozenset(caltech101(tmp_path, "test", split_seed=s).paths) for s in range(4, 9)}
    assert len(other | {frozenset(test_paths)}) > 1  # seeds matter
    for index, path in enumerate(train.paths):  # labels follow the folders
        assert train.class_names[int(train.targets[index])] == path.parent.name


# --------------------------------------------------------------------------- Flowers-102

@needs_pillow
def test_flowers102_splits_from_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    labels = [1, 2, 3, 1, 2, 3, 3]
    for number, label in enumerate(labels, start=1):
        write_image(tmp_path / "jpg" / f"image_{number:05d}.jpg", colour_of(label - 1, number))
    scipy_io.savemat(tmp_path / "imagelabels.mat", {"labels": np.array([labels], dtype=np.float64)})
    scipy_io.savemat(tmp_path / "setid.mat", {"trnid": np.array([[2, 1]]), "valid": np.array([[7]]),
                                              "tstid": np.array([[3, 4, 5, 6]])})
    train = flowers102(tmp_path, "train")
    assert train.targets.tolist() == [1, 0] and train.class_names == ["flower_001", "flower_002", "flower_003"]
    assert_colour(train[0][0], colour_of(1, 2))
    assert flowers102(tmp_path, "val").targets.tolist() == [2]
    assert flowers102(tmp_path, "test").targets.tolist() == [2, 0, 1, 2]
    assert flowers102(tmp_path, "trainval").targets.tolist() == [1, 0, 2]
    data = load_dataset("flowers102", tmp_path, "test")
    assert data.num_classes == 3 and data.labels.tolist() == [2, 0, 1, 2]
    scipy_io.savemat(tmp_path / "setid.mat", {"trnid": np.array([[9]]), "valid": np.array([[1]]),
                                              "tstid": np.array([[1]])})
    with pytest.raises(ValueError, match="1…7"):
        flowers102(tmp_path, "train")


# --------------------------------------------------------------------------- registry

def test_load_dataset_registry_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="root is required"):
        load_dataset("cub200")
    with pytest.raises(ValueError, match="download"):
        load_dataset("flowers102", tmp_path, download=True)
    with pytest.raises(TypeError):
        load_dataset(3)
