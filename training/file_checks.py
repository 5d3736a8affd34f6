"""Checks of files a user hands us, at the edge: JSON configs, safetensors weights, model folders, file content.

Each check either returns what it read or raises :class:`MedVQAUserError` naming the file and the reason, so the
commands never meet a ``JSONDecodeError``, a ``RecursionError`` from a hostile nesting, a ``SafetensorError``
or an ``IsADirectoryError`` deep inside transformers.  Content is classified by its leading bytes as well as by
its name (:func:`sniff`): a DICOM renamed ``scan.png`` is still a DICOM.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError

# Configs, indexes and reports are small; a larger "config" is not one (and would be read whole).
MAX_JSON_BYTES = 64 * 2**20

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SNIFF_BYTES = 132  # DICOM's "DICM" sits after a 128-byte preamble


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error on a user path (``Is a directory``, ``Too many levels of symbolic links``)."""
    return exc.strerror or exc.__class__.__name__


def why_not(path: str | os.PathLike[str], want: str = "file") -> str:
    """Why ``path`` is not the regular file (``want="file"``) or folder (``"folder"``) a command expected, in the
    words of the file system: "no such file or folder", "is a folder, not a file", "Too many levels of symbolic
    links" (a symlink loop), "Permission denied" ..."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return "no such file or folder" if exc.errno == errno.ENOENT else os_reason(exc)
    if want == "folder":
        return "is a file, not a folder" if stat.S_ISREG(mode) else "is not a folder"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return "is not a regular file (a FIFO, socket or device)"


def _read_small_text(path: Path, what: str) -> str:
    """The UTF-8 text of a small regular file (a config, recipe or report); every way it cannot be read becomes
    one user error naming it. Non-regular files are refused before they are opened (a FIFO would block)."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise MedVQAUserError(path, f"{what} is not a regular file")
        if info.st_size > MAX_JSON_BYTES:
            raise MedVQAUserError(path, f"{what} is larger than {MAX_JSON_BYTES // 2**20} MiB")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MedVQAUserError(path, f"{what} not found") from None
    except OSError as exc:
        raise MedVQAUserError(path, f"cannot read the {what} ({os_reason(exc)})") from None
    except UnicodeDecodeError as exc:
        raise MedVQAUserError(
            path, f"{what} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Parse the JSON file ``path``; every way it can be unreadable becomes one user error naming it."""
    path = Path(path)
    text = _read_small_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedVQAUserError(path, f"{what} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise MedVQAUserError(path, f"{what} is nested too deeply to be a real one") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise MedVQAUserError(path, f"{what} is not usable JSON ({exc})") from None


def read_json_object(path: str | os.PathLike[str], what: str = "JSON file") -> dict[str, Any]:
    """:func:`read_json` that also requires a JSON object at the top."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise MedVQAUserError(path, f"{what} must be a JSON object, not {type(data).__name__}")
    return data


def check_safetensors(path: str | os.PathLike[str]) -> list[str]:
    """The tensor names of a safetensors file whose header the safetensors library accepts.

    ``safe_open`` parses the 8-byte length and the JSON header and checks every tensor's offsets against the
    file size, without reading tensor data: a 0-byte file, a pickle renamed ``.safetensors``, a truncated file and
    a bogus header are all refused here, before a command lists, uploads or loads the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise MedVQAUserError(path, "weights file is not a regular file")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return list(handle.keys())
    except SafetensorError as exc:
        kind = sniff(path)
        hint = f" (the file is a {kind})" if kind and kind != "safetensors" else ""
        raise MedVQAUserError(path, f"not a valid safetensors file: {exc}{hint}") from None
    except OSError as exc:
        raise MedVQAUserError(path, f"cannot read the weights ({os_reason(exc)})") from None


def sniff(path: str | os.PathLike[str]) -> str | None:
    """The kind of a regular file from its first bytes: ``dicom``, ``png``, ``jpeg``, ``tiff``, ``gif``, ``bmp``,
    ``pickle``, ``zip`` (torch.save's format), ``gzip``, ``nifti``, ``safetensors``; None when unknown or unreadable.

    Never follows a symbolic link and never opens anything but a regular file (a FIFO would block).
    """
    try:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        head = os.read(fd, _SNIFF_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return sniff_bytes(head)


def sniff_bytes(head: bytes) -> str | None:
    """:func:`sniff` on the first bytes of a file (at least 132 for DICOM)."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    # before the short magics: a header length's low bytes may spell "BM" or a pickle PROTO by chance
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100 * 2**20:
        return "safetensors"
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    if head.startswith(b"GIF8"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5 opens with PROTO
        return "pickle"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):  # NIfTI-1/-2 header size
        return "nifti"
    return None


def check_model_folder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A model folder's config.json, after checking the folder loads from safetensors (DESIGN.md §9).

    Refused: a path that is not a folder, a missing or broken config.json (no ``model_type``), no safetensors
    weights (a folder with only ``pytorch_model.bin`` says so), an unreadable safetensors file.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise MedVQAUserError(folder, f"not a model folder ({why_not(folder, 'folder')}, so no config.json)")
    if not (folder / "config.json").exists():
        raise MedVQAUserError(folder, "not a model folder (no config.json)")
    config = read_json_object(folder / "config.json", "config.json")
    if not isinstance(config.get("model_type"), str):
        raise MedVQAUserError(folder / "config.json", "config.json names no model_type")
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists() or single.is_symlink():
        check_safetensors(single)
    elif index.exists():
        weight_map = read_json_object(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MedVQAUserError(index, "shard index has no weight_map of file names")
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard:
                raise MedVQAUserError(index, f"shard name {shard!r} is not a file name in the folder")
            check_safetensors(folder / shard)
    else:
        pickled = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
        found = (
            f"; found only pickled weights ({', '.join(pickled)}), which medvqa never loads"
            if pickled
            else ""
        )
        raise MedVQAUserError(folder, f"no model.safetensors weights{found}")
    return config


def read_yaml(path: str | os.PathLike[str], what: str = "YAML file") -> Any:
    """Parse the YAML file ``path`` with ``yaml.safe_load`` (no Python objects); errors name the file and line."""
    import yaml

    path = Path(path)
    text = _read_small_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MedVQAUserError(path, f"not valid YAML{where} ({problem})") from None
    except RecursionError:
        raise MedVQAUserError(path, f"{what} is nested too deeply to be a real one") from None
