"""``medvqa push --space REPO_ID --model MODEL_ID``: create or update a Hugging Face Space running ``medvqa app``.

The Space gets the files of ``hub_card/space/``: a thin ``app.py``, ``requirements.txt`` and ``README.md`` whose
metadata (``models:``) names the model the app loads, plus the ``training`` package the app is part of and
``modeling_medvqa`` (whose classes the loader registers with transformers), since medvqa-lite is not on PyPI and a
Space installs only ``requirements.txt``.  Private unless ``--public``; ``--dry-run`` lists the files and contacts nothing.
Everything goes up in one commit, as with ``medvqa push``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError

SPACE_TEMPLATE = Path(__file__).resolve().parent / "space"
REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "modeling_medvqa")  # the app, and the model classes it registers with transformers
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def _check_id(value: str, what: str) -> None:
    from hub_card.push import check_repo_id

    if not _HUB_ID.match(value or "") or value.startswith((".", "/")) or Path(value).exists():
        raise MedVQAUserError(
            value, f"not a Hub {what} id (expected namespace/name; a Space loads from the Hub)"
        )
    check_repo_id(value)  # and what huggingface_hub's own validator refuses ("--", "..", ".git")


def space_readme(model_id: str, space_id: str) -> str:
    """The Space's README.md: the template with the model named in its metadata and text."""
    from huggingface_hub import RepoCard

    text = (SPACE_TEMPLATE / "README.md").read_text(encoding="utf-8")
    card = RepoCard(text.replace("{model_id}", model_id).replace("{space_id}", space_id))
    card.data.models = [model_id]
    card.data.sdk_version = metadata.version("gradio")  # the version the app was tested with
    return str(card)


def space_files(model_id: str, space_id: str) -> dict[str, bytes]:
    """Path in the Space -> content: app.py, requirements.txt, README.md, the ``training`` and ``modeling_medvqa``
    packages."""
    files = {
        "README.md": space_readme(model_id, space_id).encode("utf-8"),
        "app.py": (SPACE_TEMPLATE / "app.py").read_bytes(),
        "requirements.txt": (SPACE_TEMPLATE / "requirements.txt").read_bytes(),
    }
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".json"):
                files[path.relative_to(REPO).as_posix()] = path.read_bytes()
    return files


def push_space(
    space_id: str,
    model_id: str,
    *,
    public: bool = False,
    dry_run: bool = False,
    api: Any = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Create ``space_id`` (a Gradio Space, private unless ``public``) and upload :func:`space_files` in one
    commit.  Returns the paths in the Space.

    Raises:
        MedVQAUserError: a malformed id, or (``PushFailed``) a Hub error, with the command to rerun.
    """
    from hub_card.push import PushFailed

    _check_id(space_id, "Space")
    _check_id(model_id, "model")
    files = space_files(model_id, space_id)
    total = sum(len(b) for b in files.values())
    log(f"Space {space_id} ({'public' if public else 'private'}) serving {model_id}")
    log(f"{'would upload' if dry_run else 'uploading'} {len(files)} files ({total / 1000:.1f} kB):")
    log("\n".join(f"  {path}" for path in files))
    if dry_run:
        log("dry run: nothing was sent")
        return list(files)

    from huggingface_hub import CommitOperationAdd

    rerun = f"medvqa push --space {space_id} --model {model_id}" + (" --public" if public else "")
    try:
        api = api if api is not None else _default_api()
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=not public, exist_ok=True)
        commit = api.create_commit(
            space_id,
            [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()],
            commit_message=f"medvqa app for {model_id} ({len(files)} files) with medvqa push --space",
            repo_type="space",
        )
    except Exception as exc:  # any Hub/network/auth error: one line, what happened and what to run again
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PushFailed(
            space_id,
            f"upload failed ({exc.__class__.__name__}: {detail}); the Space got no partial commit; fix the cause "
            f"(e.g. `hf auth login`, network) and rerun: {rerun}",
        ) from exc
    log(f"pushed {len(files)} files to {getattr(commit, 'commit_url', None) or space_id}")
    return list(files)


def _default_api() -> Any:
    from huggingface_hub import HfApi

    return HfApi()
