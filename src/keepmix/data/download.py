"""Downloading archives with MD5 verification, safe tar extraction, checksums of local files.

Only the standard library is used (``urllib``, ``hashlib``, ``tarfile``). Any URL that
``urllib`` opens works, ``file://`` included (the tests build a tarball and "download" it).

* :func:`file_md5` — hex MD5 of a file, read in chunks.
* :func:`download_url` — fetch ``url`` into ``root/filename``; the file is written to a
  ``.part`` name and renamed only after its MD5 matched, so a broken download never
  looks like a finished one. An existing file with the right MD5 is not fetched again.
* :func:`extract_archive` — unpack a ``.tar``/``.tar.gz``/``.tgz``; members that would land
  outside the destination (absolute paths, ``..``, links) are refused.
* :func:`verify_files` — compare local files against expected MD5s: mismatches warn
  (:class:`ChecksumWarning`) or, with ``strict=True``, raise :class:`ChecksumError`.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

PathLike = Union[str, os.PathLike]

_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A file's MD5 differs from the published one (downloads always; local files with ``strict=True``)."""


class ChecksumWarning(UserWarning):
    """A local data file's MD5 differs from the published one (a subset or a re-pack); it is loaded anyway."""


def file_md5(path: PathLike) -> str:
    """Hexadecimal MD5 digest of the file at ``path``."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5_string(md5: Optional[str]) -> Optional[str]:
    if md5 is None:
        return None
    if not isinstance(md5, str):
        raise TypeError(f"md5 must be a hexadecimal string or None, got {type(md5).__name__}")
    value = md5.strip().lower()
    if len(value) != 32 or any(ch not in "0123456789abcdef" for ch in value):
        raise ValueError(f"md5 must be 32 hexadecimal digits, got {md5!r}")
    return value


def download_url(url: str, root: PathLike, *, md5: Optional[str] = None,
                 filename: Optional[str] = None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``root/filename`` and verify its MD5.

    Args:
        url: any URL ``urllib.request.urlopen`` accepts (``https://``, ``file://``…).
        root: destination folder (created if missing).
        md5: expected hex digest; ``None`` skips verification.
        filename: name of the saved file; defaults to the last component of the URL path.
        timeout: socket timeout in seconds.

    Returns:
        The path of the downloaded (or already present and verified) file.

    Raises:
        ChecksumError: the downloaded bytes do not have the expected MD5 (the partial
            file is removed).
        OSError / urllib.error.URLError: the URL cannot be read.
    """
    if not isinstance(url, str) or not url:
        raise TypeError(f"url must be a non-empty string, got {url!r}")
    md5 = _check_md5_string(md5)
    if filename is None:
        filename = os.path.basename(urllib.request.url2pathname(url.split("?", 1)[0].rstrip("/")))
    if not filename or filename in (".", ".."):
        raise ValueError(f"cannot derive a file name from url {url!r}; pass filename")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / filename
    if target.is_file() and (md5 is None or file_md5(target) == md5):
        return target
    partial = target.with_name(target.name + ".part")
    digest = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if md5 is not None and got != md5:
            raise ChecksumError(f"MD5 of the file downloaded from {url} is {got}, expected {md5} "
                                f"(corrupt or incomplete download, or a different file)")
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    return target


def _is_within(base: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(base.resolve())
    except ValueError:
        return False
    return True


def extract_archive(archive: PathLike, destination: PathLike) -> Path:
    """Unpack a tar archive (optionally gzip/bzip2/xz compressed) into ``destination``.

    Members with absolute names, ``..`` components, links or device files are refused
    (``ValueError``): an archive must not write outside ``destination``.
    """
    archive = Path(archive)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"archive {archive} is not a tar file")
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            name = member.name
            if os.path.isabs(name) or ".." in Path(name).parts:
                raise ValueError(f"archive {archive} holds an unsafe member name {name!r}")
            if not (member.isfile() or member.isdir()):
                raise ValueError(f"archive {archive} holds {name!r}, which is not a plain file or folder")
            if not _is_within(destination, destination / name):
                raise ValueError(f"archive {archive} member {name!r} would be written outside {destination}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(destination, members=members, filter="data")
        else:  # pragma: no cover - Python without extraction filters; members were checked above
            tar.extractall(destination, members=members)
    return destination


def download_and_extract(url: str, root: PathLike, *, md5: Optional[str] = None,
                         filename: Optional[str] = None, remove_archive: bool = False) -> Path:
    """:func:`download_url` then :func:`extract_archive` into ``root``; returns ``root``."""
    archive = download_url(url, root, md5=md5, filename=filename)
    extract_archive(archive, root)
    if remove_archive:
        archive.unlink()
    return Path(root)


def verify_files(folder: PathLike, expected: Mapping[str, str], *, strict: bool = False,
                 what: str = "data set") -> list:
    """Compare ``folder/name`` against ``expected[name]`` (hex MD5) for every listed file.

    Returns the names whose checksum differs. Those are reported in one
    :class:`ChecksumWarning`, or raise :class:`ChecksumError` when ``strict``.
    Files that are absent are not checked here (the loader reports them).
    """
    folder = Path(folder)
    mismatched = []
    for name, md5 in expected.items():
        path = folder / name
        if path.is_file() and file_md5(path) != md5:
            mismatched.append(name)
    if mismatched:
        listing = ", ".join(mismatched)
        message = (f"{what} files in {folder} do not match the published MD5 checksums: {listing}. "
                   f"They may be a subset or a re-pack")
        if strict:
            raise ChecksumError(message + "; refusing them because strict=True")
        warnings.warn(message + "; loading them anyway (pass strict=True to refuse)", ChecksumWarning,
                      stacklevel=3)
    return mismatched
