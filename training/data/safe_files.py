"""Reading files that a dataset names, without trusting the dataset: the one place the converters and importers
open an image or a QA file they found in a release.

The rules (issue 10):

* a name from a row is a *relative* path inside the dataset root: no NUL byte, no absolute path, no ``..``
  that climbs out (:func:`row_path`);
* after resolving symlinks the file must still lie inside the root (:func:`inside`): a link to ``/etc/passwd``
  or to another user's data is neither read nor recorded;
* only regular files are opened, and the type is checked on the open descriptor (opened non-blocking), so a
  FIFO cannot block the converter and a device such as ``/dev/zero`` cannot feed it forever
  (:func:`open_regular`);
* at most a bounded number of bytes is read to hash or parse a file (:data:`MAX_IMAGE_BYTES`,
  :data:`MAX_TABLE_BYTES`).

Refusals come back as reasons (strings) for the per-row ``rejected.jsonl`` buckets; whole-file problems (a QA
file, a CSV) are raised as :class:`MedVQAUserError` by the callers.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from pathlib import Path
from typing import BinaryIO

MAX_IMAGE_BYTES = 1 << 30
"""Largest image file hashed or verified (1 GiB: a big uncompressed whole-slide tile or DICOM series file)."""

MAX_TABLE_BYTES = 2 << 30
"""Largest QA / annotation file (JSON, CSV) read; OmniMedVQA's largest QA file is a few tens of MB."""

_CHUNK = 1 << 20


class UnsafeFile(Exception):
    """A file a dataset names that must not be read; ``reason`` is a ``rejected.jsonl`` reason, ``detail`` why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def row_path(name: str) -> str:
    """A row's image name as a normalised relative POSIX path (backslashes read as separators).

    Raises:
        UnsafeFile: ``malformed_row`` for a NUL byte, an absolute name or one that climbs out with ``..``.
    """
    if "\0" in name:
        raise UnsafeFile("malformed_row", "image path contains a NUL byte")
    key = posixpath.normpath(name.replace("\\", "/"))
    if key.startswith("/") or key == ".." or key.startswith("../") or key == ".":
        raise UnsafeFile("malformed_row", f"image path outside the dataset root: {name!r}")
    return key


def inside(root_real: Path, path: Path) -> Path:
    """``path`` with symlinks resolved; it must lie inside ``root_real`` (itself already resolved).

    Raises:
        UnsafeFile: ``missing_image`` when nothing is there, ``image_outside_root`` when the resolved file lies
            outside the root, ``unreadable_image`` for a symlink loop or an unreadable folder on the way.
    """
    try:
        real = path.resolve(strict=True)
    except FileNotFoundError:
        raise UnsafeFile("missing_image", "no such file") from None
    except (OSError, RuntimeError) as exc:  # ELOOP (RuntimeError on older Pythons), EACCES, ENOTDIR ...
        if isinstance(exc, NotADirectoryError):
            raise UnsafeFile("missing_image", "no such file") from None
        raise UnsafeFile(
            "unreadable_image", f"cannot resolve ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if real != root_real and root_real not in real.parents:
        raise UnsafeFile("image_outside_root", "a symlink that leads outside the dataset root")
    return real


def open_regular(path: Path, max_bytes: int) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file of at most ``max_bytes`` bytes.

    The file is opened with O_NONBLOCK (so a FIFO does not wait for a writer) and judged by ``fstat`` on that
    descriptor, so nothing can swap the file between the check and the read.

    Raises:
        UnsafeFile: ``missing_image`` / ``unreadable_image`` with the reason.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UnsafeFile("missing_image", "no such file") from None
    except (OSError, ValueError) as exc:
        raise UnsafeFile(
            "unreadable_image", f"cannot open ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    st = os.fstat(fd)
    why = None
    if stat.S_ISDIR(st.st_mode):
        why = "is a directory"
    elif not stat.S_ISREG(st.st_mode):
        why = "not a regular file (FIFO, socket or device)"
    elif st.st_size > max_bytes:
        why = f"{st.st_size} bytes, more than the cap of {max_bytes}"
    if why:
        os.close(fd)
        raise UnsafeFile("unreadable_image", why)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_regular(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> None:
    """Raise :class:`UnsafeFile` unless ``path`` is a regular file of at most ``max_bytes`` (``stat`` only: for
    importers that record an image without reading it)."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise UnsafeFile("missing_image", "no such file") from None
    except (OSError, ValueError) as exc:
        raise UnsafeFile(
            "unreadable_image", f"cannot read ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeFile("unreadable_image", "is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile("unreadable_image", "not a regular file (FIFO, socket or device)")
    if st.st_size > max_bytes:
        raise UnsafeFile("unreadable_image", f"{st.st_size} bytes, more than the cap of {max_bytes}")


def dataset_image(root_real: Path, name: str) -> str:
    """Check the image a row names under ``root_real`` (already resolved) without reading it; returns the
    normalised relative name, the one to record: checked and recorded at the same path.

    Raises:
        UnsafeFile: see :func:`row_path`, :func:`inside` and :func:`check_regular`.
    """
    key = row_path(name)
    check_regular(inside(root_real, root_real / key))
    return key


def hash_file(path: Path, max_bytes: int = MAX_IMAGE_BYTES) -> tuple[str, bytes]:
    """SHA-256 of a regular file and its first 512 bytes (for the format check), read in 1 MiB pieces and never
    more than ``max_bytes`` (a file that grows past the cap while it is read is refused too).

    Raises:
        UnsafeFile: see :func:`open_regular`.
    """
    digest = hashlib.sha256()
    head = b""
    total = 0
    with open_regular(path, max_bytes) as fh:
        while chunk := fh.read(_CHUNK):
            if not head:
                head = chunk[:512]
            total += len(chunk)
            if total > max_bytes:
                raise UnsafeFile("unreadable_image", f"more than the cap of {max_bytes} bytes")
            digest.update(chunk)
    return digest.hexdigest(), head


def read_table(path: Path, root_real: Path | None = None, max_bytes: int = MAX_TABLE_BYTES) -> bytes:
    """The bytes of a QA / annotation file: regular, inside ``root_real`` (when given), at most ``max_bytes``.

    Raises:
        MedVQAUserError: naming the file and the reason.
    """
    from training.errors import MedVQAUserError

    try:
        real = inside(root_real, path) if root_real is not None else path
        with open_regular(real, max_bytes) as fh:
            data = fh.read(max_bytes + 1)
    except UnsafeFile as exc:
        detail = (
            "a symlink that leads outside the dataset root"
            if exc.reason == "image_outside_root"
            else exc.detail
        )
        raise MedVQAUserError(path, detail) from None
    except OSError as exc:
        raise MedVQAUserError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise MedVQAUserError(path, f"more than the cap of {max_bytes} bytes")
    return data
