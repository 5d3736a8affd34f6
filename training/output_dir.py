"""The one rule for every folder a command writes (DESIGN.md §9): never destroy what the command did not create.

A command may write into a folder only if the folder is new, empty, or carries the marker file that this command
left there on an earlier run. Anything else (a regular file, a symlink, a folder with someone else's files, a
folder another command made) is refused with a :class:`MedVQAUserError` before anything is written or deleted.
Commands call :func:`prepare_output_dir` once, at the edge, and then write freely below the returned path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from training.errors import MedVQAUserError

MARKER = ".medvqa-output.json"


def marker_command(folder: Path) -> str | None:
    """The command recorded in ``folder``'s marker file, or None when there is no readable marker."""
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8")[:4096])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("command") if isinstance(data, dict) and isinstance(data.get("command"), str) else None


def prepare_output_dir(path: str | os.PathLike[str], command: str) -> Path:
    """Check that ``command`` may write into ``path``, create it if needed, mark it, and return it.

    Accepted: a path that does not exist (its parents are created), an empty folder, or a folder whose marker
    names the same ``command`` (a re-run overwrites that command's own outputs). Refused, with the path and the
    reason: a regular file or any other non-folder, a symlink, a folder holding files but no marker of this
    command, and a parent path that is not a folder.
    """
    out = Path(path)
    if out.is_symlink():
        raise MedVQAUserError(out, "output folder is a symbolic link; give a real folder")
    if out.exists():
        if not out.is_dir():
            raise MedVQAUserError(out, "output path exists and is not a folder")
        try:
            entries = [e.name for e in os.scandir(out)]
        except OSError as exc:
            raise MedVQAUserError(out, f"cannot list the output folder ({exc.strerror or exc})") from None
        if entries:
            owner = marker_command(out)
            if owner is None:
                raise MedVQAUserError(
                    out,
                    "output folder is not empty and was not made by medvqa; choose an empty or new folder",
                )
            if owner != command:
                raise MedVQAUserError(
                    out, f"output folder was made by 'medvqa {owner}', not 'medvqa {command}'; choose another"
                )
    else:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise MedVQAUserError(out, "a parent of the output folder is not a folder") from None
        except OSError as exc:
            raise MedVQAUserError(out, f"cannot create the output folder ({exc.strerror or exc})") from None
    try:
        (out / MARKER).write_text(json.dumps({"command": command}) + "\n", encoding="utf-8")
    except OSError as exc:
        raise MedVQAUserError(out, f"cannot write into the output folder ({exc.strerror or exc})") from None
    return out
