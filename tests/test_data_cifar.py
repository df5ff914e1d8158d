"""CIFAR loading, checksums, downloads and archive extraction.

The data files are written here in the official Python-2 style: protocol 2, byte-string keys
and values as SHORT_BINSTRING/BINSTRING opcodes, numpy arrays as ``numpy.core.multiarray
._reconstruct`` with the raw bytes in a BINSTRING — the opcodes of the published files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import pickletools
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from keepmix.data import cifar as cifar_module
from keepmix.data import (ChecksumError, ChecksumWarning, download_url, extract_archive, file_md5, load_cifar10,
                          load_cifar100, load_dataset, read_cifar_pickle, verify_files)


# --------------------------------------------------------------------------- Python-2 style pickles

def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_str(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value
    return b"T" + struct.pack("<i", len(value)) + value


def _py2_array(array: np.ndarray) -> bytes:
    assert array.dtype == np.uint8 and array.ndim == 2
    rows, cols = array.shape
    return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + _py2_int(0) + b"\x85"
            + _py2_str(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + _py2_int(rows) + _py2_int(cols) + b"\x86"
            + b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
            + b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
            + b"\x89" + _py2_str(np.ascontiguousarray(array).tobytes()) + b"tb")


def _py2_value(value) -> bytes:
    if isinstance(value, dict):
        return b"}(" + b"".join(_py2_value(k) + _py2_value(v) for k, v in value.items()) + b"u"
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    if isinstance(value, bytes):
        return _py2_str(value)
    if isinstance(value, (int, np.integer)):
        return _py2_int(int(value))
    if isinstance(value, np.ndarray):
        return _py2_array(value)
    raise TypeError(type(value))


def py2_pickle(obj) -> bytes:
    return b"\x80\x02" + _py2_value(obj) + b"."


def test_py2_writer_matches_the_official_format():
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = py2_pickle({b"batch_label": b"training batch 1 of 5", b"labels": [3, 7], b"data": data})
    loaded = pickle.loads(blob, encoding="bytes")
    assert set(loaded) == {b"batch_label", b"labels", b"data"}
    assert loaded[b"labels"] == [3, 7]
    np.testing.assert_array_equal(loaded[b"data"], data)
    opcodes = {op.name for op, _, _ in pickletools.genops(blob)}
    assert "BINSTRING" in opcodes and "SHORT_BINSTRING" in opcodes
    assert not opcodes & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES"}  # no Python-3-only opcodes


# --------------------------------------------------------------------------- fixtures

CIFAR10_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]


def _random_batch(rng: np.random.Generator, n: int, classes: int):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, classes, n)]


def write_cifar10(folder: Path, per_batch: int = 4, seed: int = 0, meta: bool = True):
    """A miniature cifar-10-batches-py; returns {file name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    content = {}
    for index, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data, labels = _random_batch(rng, per_batch + index, 10)
        label = b"testing batch 1 of 1" if name == "test_batch" else f"training batch {index + 1} of 5".encode()
        (folder / name).write_bytes(py2_pickle({b"batch_label": label, b"labels": labels, b"data": data}))
        content[name] = (data, labels)
    if meta:
        (folder / "batches.meta").write_bytes(py2_pickle({b"num_cases_per_batch": 10000,
                                                          b"label_names": CIFAR10_NAMES, b"num_vis": 3072}))
    return content


def write_cifar100(folder: Path, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    content = {}
    for name, n in (("train", 7), ("test", 3)):
        data, fine = _random_batch(rng, n, 100)
        coarse = [f // 5 for f in fine]
        (folder / name).write_bytes(py2_pickle({b"filenames": [b"x.png"] * n, b"batch_label": b"b",
                                                b"fine_labels": fine, b"coarse_labels": coarse, b"data": data}))
        content[name] = (data, fine, coarse)
    (folder / "meta").write_bytes(py2_pickle({b"fine_label_names": [f"fine{k}".encode() for k in range(100)],
                                              b"coarse_label_names": [f"coarse{k}".encode() for k in range(20)]}))
    return content


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ChecksumWarning)
        return load_cifar10(*args, **kwargs)


# --------------------------------------------------------------------------- loading

def test_cifar10_train_and_test_contents(tmp_path):
    content = write_cifar10(tmp_path / "cifar-10-batches-py")
    train = _quiet_load(tmp_path, "train")
    test = _quiet_load(tmp_path, "test")
    expected_train = np.concatenate([content[f"data_batch_{i}"][0] for i in range(1, 6)])
    expected_labels = sum((content[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert train.images.dtype == torch.uint8 and train.images.shape == (len(expected_labels), 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == expected_labels
    assert test.labels.tolist() == content["test_batch"][1]
    assert train.class_names == [n.decode() for n in CIFAR10_NAMES] and train.num_classes == 10
    # a row is 1024 R, 1024 G, 1024 B values in row-major order: pixel (y, x) of channel c is c·1024 + 32y + x
    for row, channel, y, x in [(0, 0, 0, 1), (1, 1, 1, 0), (5, 2, 31, 31), (7, 0, 17, 3)]:
        assert int(train.images[row, channel, y, x]) == int(expected_train[row, channel * 1024 + 32 * y + x])


def test_cifar10_root_may_be_the_batches_folder(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    a = _quiet_load(tmp_path, "test")
    b = _quiet_load(tmp_path / "cifar-10-batches-py", "test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_cifar10_without_meta_uses_the_official_names(tmp_path):
    write_cifar10(tmp_path, meta=False)
    assert _quiet_load(tmp_path, "test").class_names[:3] == ["airplane", "automobile", "bird"]


def test_cifar100_fine_and_coarse(tmp_path):
    content = write_cifar100(tmp_path / "cifar-100-python")
    with pytest.warns(ChecksumWarning):
        fine = load_cifar100(tmp_path, "train")
    with pytest.warns(ChecksumWarning):
        coarse = load_cifar100(tmp_path, "test", label_type="coarse")
    assert fine.labels.tolist() == content["train"][1] and fine.num_classes == 100
    assert coarse.labels.tolist() == content["test"][2] and coarse.class_names[0] == "coarse0"
    assert fine.images.shape == (7, 3, 32, 32)
    with pytest.raises(ValueError, match="label_type"):
        load_cifar100(tmp_path, "train", label_type="medium")


def test_python3_repack_with_str_keys_and_array_labels(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": data, "labels": np.array([1, 2, 3])}, protocol=4))
    with pytest.warns(ChecksumWarning):
        loaded = load_cifar10(tmp_path, "test")
    assert loaded.labels.tolist() == [1, 2, 3]
    assert torch.equal(loaded.images.reshape(3, -1), torch.from_numpy(data))


def test_checksum_mismatch_warns_names_files_and_strict_raises(tmp_path):
    write_cifar10(tmp_path)
    with pytest.warns(ChecksumWarning, match="test_batch"):
        load_cifar10(tmp_path, "test")
    with pytest.raises(ChecksumError, match="strict"):
        load_cifar10(tmp_path, "test", strict=True)


def test_matching_checksums_load_silently(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    spec = dataclasses.replace(cifar_module.CIFAR10, test_files=(("test_batch", file_md5(tmp_path / "test_batch")),))
    monkeypatch.setattr(cifar_module, "CIFAR10", spec)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_cifar10(tmp_path, "test", strict=True)
    assert len(loaded) == 9


def test_truncated_and_corrupt_files_raise_naming_the_file(tmp_path):
    write_cifar10(tmp_path)
    blob = (tmp_path / "test_batch").read_bytes()
    (tmp_path / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="test_batch.*truncated or corrupt"):
        _quiet_load(tmp_path, "test")
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle at all")
    with pytest.raises(ValueError, match="test_batch"):
        _quiet_load(tmp_path, "test")


def test_structurally_wrong_batches_raise(tmp_path):
    write_cifar10(tmp_path)
    data = np.zeros((2, 3072), dtype=np.uint8)
    cases = [({b"data": data}, "labels"),
             ({b"data": data, b"labels": [1]}, "2 images but 1 labels"),
             ({b"data": data, b"labels": [1, 10]}, r"\[0, 10\)"),
             ({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [1, 2]}, "3072"),
             ([1, 2], "dict")]
    for content, message in cases:
        (tmp_path / "test_batch").write_bytes(py2_pickle(content))
        with pytest.raises(ValueError, match=message):
            _quiet_load(tmp_path, "test")


def test_unpickling_refuses_arbitrary_globals(tmp_path):
    marker = tmp_path / "created_by_pickle"
    # GLOBAL builtins.open, then open(marker, "w"): a pickle that would create a file if run
    hostile = (b"\x80\x02c__builtin__\nopen\n(" + _py2_str(str(marker).encode()) + _py2_str(b"w") + b"tR.")
    path = tmp_path / "test_batch"
    path.write_bytes(hostile)
    with pytest.raises(ValueError, match="not allowed"):
        read_cifar_pickle(path)
    assert not marker.exists()


def test_missing_files_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_cifar10(tmp_path, "train")
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        _quiet_load(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        _quiet_load(tmp_path, "validation")


# --------------------------------------------------------------------------- checksums and downloads

def test_file_md5_and_verify_files(tmp_path):
    (tmp_path / "a").write_bytes(b"keepmix")
    assert file_md5(tmp_path / "a") == hashlib.md5(b"keepmix").hexdigest()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert verify_files(tmp_path, {"a": hashlib.md5(b"keepmix").hexdigest(), "absent": "0" * 32}) == []
    with pytest.warns(ChecksumWarning, match="a"):
        assert verify_files(tmp_path, {"a": "0" * 32}) == ["a"]
    with pytest.raises(ChecksumError):
        verify_files(tmp_path, {"a": "0" * 32}, strict=True)


def _tarball(path: Path, files: dict) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_download_url_verifies_md5(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload" * 1000)
    good = file_md5(source)
    target = download_url(source.as_uri(), tmp_path / "out", md5=good)
    assert target.name == "source.bin" and target.read_bytes() == source.read_bytes()
    with pytest.raises(ChecksumError, match="expected"):
        download_url(source.as_uri(), tmp_path / "bad", md5="0" * 32)
    assert not any((tmp_path / "bad").iterdir())  # neither the file nor a partial one is left
    with pytest.raises(ValueError, match="md5"):
        download_url(source.as_uri(), tmp_path / "bad", md5="xyz")
    source.unlink()  # an already downloaded, verified file is not fetched again
    assert download_url(source.as_uri(), tmp_path / "out", md5=good) == target


def test_cifar10_download_from_a_file_url(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_cifar10(staging / "cifar-10-batches-py", per_batch=2)
    archive = _tarball(tmp_path / "cifar-10-python.tar.gz",
                       {f"cifar-10-batches-py/{p.name}": p.read_bytes()
                        for p in sorted((staging / "cifar-10-batches-py").iterdir())})
    spec = dataclasses.replace(cifar_module.CIFAR10, url=archive.as_uri(), archive_md5=file_md5(archive))
    monkeypatch.setattr(cifar_module, "CIFAR10", spec)
    root = tmp_path / "data"
    with pytest.warns(ChecksumWarning):
        loaded = load_dataset("cifar10", root, "test", download=True)
    expected = _quiet_load(staging, "test")
    assert torch.equal(loaded.images, expected.images) and torch.equal(loaded.labels, expected.labels)
    assert loaded.mean == (0.4914, 0.4822, 0.4465) and loaded.std == (0.2470, 0.2435, 0.2616)
    assert (root / "cifar-10-python.tar.gz").is_file()

    wrong = dataclasses.replace(spec, archive_md5="0" * 32)
    monkeypatch.setattr(cifar_module, "CIFAR10", wrong)
    with pytest.raises(ChecksumError):
        load_cifar10(tmp_path / "elsewhere", "test", download=True)


def test_extract_archive_refuses_unsafe_members(tmp_path):
    for name in ("../escape.txt", "/abs.txt"):
        archive = _tarball(tmp_path / "bad.tar.gz", {name: b"x"})
        with pytest.raises(ValueError, match="unsafe"):
            extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    with tarfile.open(tmp_path / "link.tar", "w") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match="not a plain file"):
        extract_archive(tmp_path / "link.tar", tmp_path / "out")
    (tmp_path / "plain.txt").write_bytes(b"not a tar")
    with pytest.raises(ValueError, match="not a tar"):
        extract_archive(tmp_path / "plain.txt", tmp_path / "out")
