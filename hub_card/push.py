"""Upload a model folder to the Hugging Face Hub: an allow-list of files, private unless --public.

What goes up (top-level files only): safetensors weights (``model.safetensors``, ``model-0000x-of-0000y.safetensors``
+ ``model.safetensors.index.json``, ``adapter_model.safetensors``), ``config.json``, ``generation_config.json``,
``adapter_config.json``, the remote code named by ``auto_map`` (and the modules it imports relatively), tokenizer and
processor files, the chat template, ``README.md``, ``report.json``/``report.md``, ``*.png`` charts,
``training_recipe.yaml`` and license files.

Everything else is left out and listed with the reason.  Symbolic links are never followed (``config.json ->
/etc/passwd`` is listed as a link and stays home).  Files are judged by content as well as by name: an allow-listed
name whose bytes are a DICOM (``DICM`` after the 128-byte preamble), a NIfTI volume, a pickle or a zip, a ``*.png``
that is not a PNG, and a ``*.safetensors`` whose header the safetensors library refuses (0 bytes, a pickle, a
truncated file) stop the push (exit 2, nothing sent).  Pickled weights (``*.bin``/``*.pt``/``*.pth``/``*.ckpt``
other than known training state) stop it too: they would not go up, and a user who sees "pushed" would believe
their weights are on the Hub.  Optimizer/scheduler/RNG states, ``checkpoint-*`` folders, pickles, DICOM/NIfTI files
and dataset files (``*.jsonl``, ``*.csv`` ...) are skipped and listed.

Configs, the recipe and the reports go up as copies with this machine's absolute paths replaced by
``<local path>`` (written to a temporary staging folder; the model folder itself is never modified).  The repo id
is checked with huggingface_hub's ``validate_repo_id``.

All files go up in one commit (``HfApi.create_commit``): a failure leaves no partial commit on the Hub and nothing
is ever written to the local folder; the error names the command to rerun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shlex
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hub_card.card import local_paths, scrub
from training.errors import MedVQAUserError
from training.file_checks import check_safetensors, read_json_object, sniff, why_not

# Exact top-level names that go up.
ALLOWED_NAMES = frozenset(
    {
        # configs
        "config.json",
        "generation_config.json",
        "adapter_config.json",
        # weights
        "model.safetensors",
        "model.safetensors.index.json",
        "adapter_model.safetensors",
        # tokenizer
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "tokenizer.model",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        # processor
        "processor_config.json",
        "preprocessor_config.json",
        "image_processor_config.json",
        "video_preprocessor_config.json",
        # chat template
        "chat_template.jinja",
        "chat_template.json",
        # documentation
        "README.md",
        "report.json",
        "report.md",
        "training_recipe.yaml",
        # Llama 3's license asks redistributors to pass its text on
        "LICENSE",
        "LICENSE.txt",
        "LICENSE.md",
        "USE_POLICY.md",
        "NOTICE",
    }
)
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
CHAT_TEMPLATE_DIR = "additional_chat_templates"  # transformers' folder of named chat templates (*.jinja)

# Pickle files of training state (Trainer / accelerate / DeepSpeed): skipped, not treated as weights.
_TRAINING_STATE = re.compile(
    r"^(optimizer|scheduler|scaler|rng_state|random_states|training_args|trainer_state)(_\d+)?\.(pt|pth|bin|pkl)$"
)
_PICKLE_WEIGHTS_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_PICKLE_FIX = "save as safetensors (save_pretrained(..., safe_serialization=True)) or move the file out"
_CHECKPOINT_DIR = re.compile(r"^(checkpoint-\d+|global_step\d+|checkpoint)$")

# suffix -> reason, for files that are skipped with a specific explanation.
_SKIP_REASONS: tuple[tuple[tuple[str, ...], str], ...] = (
    ((".pkl", ".pickle", ".joblib"), "pickle file (runs code when loaded)"),
    ((".dcm", ".dicom"), "DICOM file (may carry patient data)"),
    (
        (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".img", ".hdr"),
        "medical image volume (may carry patient data)",
    ),
    ((".jsonl", ".csv", ".tsv", ".parquet", ".arrow"), "dataset or predictions file (records and questions)"),
    (
        (".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"),
        "image other than a PNG chart (could be a scan)",
    ),
    (
        (".safetensors",),
        "safetensors file transformers would not load (not model*.safetensors / adapter_model)",
    ),
    ((".py",), "Python file not named by auto_map (only the model's remote code goes up)"),
)


@dataclass
class PushPlan:
    """What a push of ``model_dir`` sends and leaves out, decided from the local folder alone."""

    model_dir: Path
    upload: list[str] = field(default_factory=list)  # paths relative to model_dir, POSIX, sorted
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    blocking: list[tuple[str, str]] = field(default_factory=list)  # files that make the push fail
    adapter_only: bool = False
    adapter_base: str | None = None
    warnings: list[str] = field(default_factory=list)
    # path -> the bytes that go up instead of the local file (configs and the recipe with local paths removed)
    sanitized: dict[str, bytes] = field(default_factory=dict)

    def size_of(self, rel: str) -> int:
        """Bytes of ``rel`` as uploaded (its sanitized copy when there is one)."""
        if rel in self.sanitized:
            return len(self.sanitized[rel])
        return (self.model_dir / rel).lstat().st_size

    @property
    def upload_bytes(self) -> int:
        return sum(self.size_of(p) for p in self.upload)


def _remote_code(model_dir: Path, top_files: set[str]) -> tuple[set[str], list[str]]:
    """Remote-code files: modules named by any ``auto_map`` plus their relative imports (transitively).

    Returns (files present, files named but missing).
    """
    modules: set[str] = set()
    for name in ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        if name not in top_files:
            continue
        data = read_json_object(model_dir / name, name)  # a broken config must not go up: one clean line
        auto_map = data.get("auto_map") if isinstance(data, dict) else None
        if not isinstance(auto_map, dict):
            continue
        for value in auto_map.values():
            for ref in value if isinstance(value, list) else [value]:
                # "module.Class"; "repo--module.Class" points at another repo and needs no file here
                if isinstance(ref, str) and "." in ref and "--" not in ref:
                    modules.add(ref.rsplit(".", 1)[0] + ".py")
    found: set[str] = set()
    missing: list[str] = []
    todo = sorted(modules)
    while todo:
        file = todo.pop()
        if file in found or file in missing:
            continue
        if file not in top_files:
            missing.append(file)
            continue
        found.add(file)
        text = (model_dir / file).read_text(encoding="utf-8", errors="replace")
        for match in re.finditer(r"^\s*from\s+\.(\w+)\s+import\b", text, re.MULTILINE):
            todo.append(match.group(1) + ".py")
        for match in re.finditer(r"^\s*from\s+\.\s+import\s+([\w\s,()]+)", text, re.MULTILINE):
            todo += [n.strip() + ".py" for n in re.split(r"[,\s()]+", match.group(1)) if n.strip()]
    return found, sorted(missing)


def _reason_for(name: str) -> tuple[str, bool]:
    """Why a top-level file that is not allowed stays out, and whether it blocks the push."""
    lower = name.lower()
    if _TRAINING_STATE.match(lower):
        return "training state (optimizer/scheduler/RNG), not needed to use the model", False
    if lower.endswith(_PICKLE_WEIGHTS_SUFFIXES):
        return f"pickled weights: {_PICKLE_FIX}", True
    if lower.startswith("."):
        return "hidden file", False
    for suffixes, reason in _SKIP_REASONS:
        if lower.endswith(suffixes):
            return reason, False
    return "not in the allow-list", False


def _looks_local(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../", "\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", value))


def _regular(path: Path) -> bool:
    """A regular file, judged without following a symbolic link."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


# Content that never goes up, whatever the file is called (a DICOM renamed scan.png is still a DICOM).
_FORBIDDEN_CONTENT = {
    "dicom": "DICOM content (may carry patient data)",
    "nifti": "NIfTI volume content (may carry patient data)",
    "pickle": "pickle content (runs code when loaded)",
    "zip": "zip archive content (torch.save pickles are zip files)",
}


def _content_refusal(path: Path) -> str | None:
    """Why an allow-listed file must not go up after all, from its bytes; None when it may."""
    kind = sniff(path)
    name = path.name.lower()
    if kind in _FORBIDDEN_CONTENT:
        return f"named {path.name} but holds {_FORBIDDEN_CONTENT[kind]}; move it out of the folder"
    if name.endswith(".png") and kind != "png":
        return "named .png but is not a PNG image (charts are PNG files); move it out of the folder"
    if name.endswith(".safetensors"):
        try:
            check_safetensors(path)
        except MedVQAUserError as exc:
            return exc.reason
    return None


_LOCAL = "<local path>"


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


def _sanitized_copy(path: Path) -> bytes | None:
    """The bytes to upload instead of ``path`` when it mentions local absolute paths; None when it is clean.

    JSON and YAML are parsed and their string values scrubbed (the copy stays valid JSON/YAML); Markdown is
    scrubbed as text.  tokenizer.json is vocabulary, never a config, and is left alone.
    """
    name = path.name
    if name == "tokenizer.json" or not name.endswith((".json", ".yaml", ".yml", ".md")):
        return None
    if path.lstat().st_size > 16 * 2**20:
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    if not local_paths(text):
        return None
    if name.endswith(".json"):
        data = read_json_object(path, name)
        return (json.dumps(_scrub_value(data), indent=2, ensure_ascii=False) + "\n").encode()
    if name.endswith((".yaml", ".yml")):
        import yaml

        from training.file_checks import read_yaml

        data = read_yaml(path, name)
        return yaml.safe_dump(_scrub_value(data), sort_keys=False, allow_unicode=True).encode()
    return scrub(text).encode()


def plan_push(model_dir: str | Path) -> PushPlan:
    """Sort the folder's files into upload / skipped / blocking and check the weights are complete.

    Raises:
        MedVQAUserError: missing folder, no safetensors weights, missing shards or remote code.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MedVQAUserError(model_dir, f"model folder: {why_not(model_dir, 'folder')}")
    plan = PushPlan(model_dir=model_dir)
    entries = sorted(model_dir.iterdir(), key=lambda p: p.name)
    # Symbolic links are never followed (is_file()/is_dir() would): config.json -> /etc/passwd stays home.
    top_files = {p.name for p in entries if _regular(p)}
    code, missing_code = _remote_code(model_dir, top_files)

    for path in entries:
        name = path.name
        if path.is_symlink():
            plan.skipped.append((name, "symbolic link (never followed: it could point anywhere)"))
            continue
        if path.is_dir():
            if name == CHAT_TEMPLATE_DIR:
                for sub in sorted(path.rglob("*")):
                    rel = sub.relative_to(model_dir).as_posix()
                    if sub.is_symlink():
                        plan.skipped.append((rel, "symbolic link (never followed: it could point anywhere)"))
                    elif _regular(sub) and sub.parent == path and sub.suffix == ".jinja":
                        plan.upload.append(rel)
                    elif _regular(sub):
                        plan.skipped.append((rel, "only *.jinja files go up from " + CHAT_TEMPLATE_DIR))
                continue
            count = sum(1 for p in path.rglob("*") if p.is_file())
            if _CHECKPOINT_DIR.match(name):
                reason = "training checkpoint folder (weights copies and optimizer states)"
            elif name.startswith("."):
                reason = "hidden folder"
            else:
                reason = "subfolder: only top-level model files go up"
            plan.skipped.append((f"{name}/ ({count} file{'s' if count != 1 else ''})", reason))
            continue
        if not _regular(path):
            plan.skipped.append((name, "not a regular file"))
            continue
        if name in ALLOWED_NAMES or _SHARD.match(name) or name in code or name.lower().endswith(".png"):
            refusal = _content_refusal(path)
            if refusal:  # the name says model file, the bytes say otherwise: stop before anything is listed
                raise MedVQAUserError(path, f"{refusal}; nothing was uploaded")
            plan.upload.append(name)
            continue
        reason, blocks = _reason_for(name)
        (plan.blocking if blocks else plan.skipped).append((name, reason))

    uploaded = set(plan.upload)
    full = "model.safetensors" in uploaded or "model.safetensors.index.json" in uploaded
    has_adapter = "adapter_config.json" in uploaded and "adapter_model.safetensors" in uploaded
    if "model.safetensors.index.json" in uploaded:
        index_path = model_dir / "model.safetensors.index.json"
        weight_map = read_json_object(index_path, "shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise MedVQAUserError(index_path, "unreadable shard index (no weight_map of file names)")
        shards = set(weight_map.values())
        absent = sorted(s for s in shards if s not in uploaded)
        if absent:
            raise MedVQAUserError(
                model_dir, f"the shard index names missing weight files: {', '.join(absent)}"
            )
    elif any(_SHARD.match(p) for p in uploaded):
        raise MedVQAUserError(model_dir, "sharded weights without model.safetensors.index.json")

    if not full and not has_adapter:
        if plan.blocking:  # the only weights are pickles: say that, it is the thing to fix
            names = ", ".join(n for n, _ in plan.blocking)
            raise MedVQAUserError(
                model_dir, f"no safetensors weights, only pickled ones ({names}); {_PICKLE_FIX}"
            )
        raise MedVQAUserError(
            model_dir,
            "no safetensors weights (model.safetensors, model-0000x-of-0000y.safetensors + index, "
            "or adapter_config.json + adapter_model.safetensors)",
        )
    if full and (model_dir / "config.json").is_symlink():
        raise MedVQAUserError(
            model_dir / "config.json", "is a symbolic link; push never follows links: put the real file there"
        )
    if full and "config.json" not in uploaded:
        raise MedVQAUserError(model_dir, "weights without config.json: transformers could not load the repo")
    if missing_code:
        raise MedVQAUserError(
            model_dir, f"auto_map names remote code that is not in the folder: {', '.join(missing_code)}"
        )

    plan.adapter_only = has_adapter and not full
    if has_adapter:
        adapter = read_json_object(model_dir / "adapter_config.json", "adapter_config.json")
        base = adapter.get("base_model_name_or_path")
        plan.adapter_base = base if isinstance(base, str) and base else None
        if plan.adapter_only and plan.adapter_base is None:
            plan.warnings.append(
                "adapter_config.json names no base_model_name_or_path: users cannot tell the base"
            )
        elif plan.adapter_only and _looks_local(plan.adapter_base):
            plan.warnings.append(
                "adapter_config.json's base_model_name_or_path is a local path: set it to the base's Hub id, "
                "or users of the Hub repo cannot load the adapter"
            )
    # Configs, the recipe and the reports go up as copies with this machine's paths replaced (the folder is never
    # modified); say which ones were changed.
    for rel in plan.upload:
        clean = _sanitized_copy(model_dir / rel)
        if clean is not None:
            plan.sanitized[rel] = clean
    if plan.sanitized:
        names = ", ".join(sorted(plan.sanitized))
        plan.warnings.append(f"local absolute paths replaced by {_LOCAL!r} in the uploaded copies of {names}")
    if "README.md" not in uploaded:
        plan.warnings.append("no README.md: run `medvqa card` first so the repo has a model card")
    plan.upload.sort()
    return plan


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # unreachable


def rerun_command(model_dir: str | Path, repo_id: str, *, public: bool, revision: str | None) -> str:
    """The exact ``medvqa push`` command line that repeats this push."""
    parts = ["medvqa", "push", "--model", str(model_dir), "--repo-id", repo_id]
    if public:
        parts.append("--public")
    if revision:
        parts += ["--revision", revision]
    return shlex.join(parts)


def format_plan(plan: PushPlan, repo_id: str, *, public: bool, revision: str | None, dry_run: bool) -> str:
    """Human summary of a plan: where it goes, what goes up, what is left out and why."""
    kind = "adapter only" if plan.adapter_only else "full model"
    lines = [
        f"{plan.model_dir} -> {repo_id} ({'public' if public else 'private'}, revision {revision or 'main'}, {kind})",
    ]
    if plan.adapter_only:
        lines.append(f"needs the base model: {plan.adapter_base or '(not named in adapter_config.json)'}")
    lines.append(
        f"{'would upload' if dry_run else 'uploading'} {len(plan.upload)} files ({_size(plan.upload_bytes)}):"
    )
    lines += [
        f"  {p}  {_size(plan.size_of(p))}" + ("  (local paths removed)" if p in plan.sanitized else "")
        for p in plan.upload
    ]
    if plan.blocking:
        lines.append(f"refused, stops the push ({len(plan.blocking)}):")
        lines += [f"  {p}  {why}" for p, why in plan.blocking]
    if plan.skipped:
        lines.append(f"left out ({len(plan.skipped)}):")
        lines += [f"  {p}  {why}" for p, why in plan.skipped]
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def _default_api() -> Any:
    from huggingface_hub import HfApi

    return HfApi()


class PushFailed(MedVQAUserError):
    """The Hub refused or the connection broke; the local folder is untouched and the message says what to rerun."""


def check_repo_id(repo_id: str) -> None:
    """Refuse what huggingface_hub's own validator refuses (``../..``, ``a/b/c``, ``--``); a bare name is the
    user's own namespace, as in ``HfApi.create_repo``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise MedVQAUserError(
            repr(repo_id), f"not a Hub repo id ({str(exc).splitlines()[0][:160]})"
        ) from None


def push_folder(
    model_dir: str | Path,
    repo_id: str,
    *,
    public: bool = False,
    dry_run: bool = False,
    revision: str | None = None,
    api: Any = None,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Create ``repo_id`` (private unless ``public``; an existing repo keeps its visibility) and upload the
    allow-listed files of ``model_dir`` in one commit, on ``revision`` (a branch, created if needed).

    Args:
        model_dir: the model folder (full model or adapter-only).
        repo_id: ``namespace/name`` on the Hub.
        public: create the repo public (default private).
        dry_run: only print the plan; no Hub call is made and no HfApi is created.
        revision: branch to commit to (default main).
        api: an ``HfApi``-like object (tests pass a double); default ``HfApi()``.
        log: where the summary lines go.

    Returns:
        The uploaded (or, with ``dry_run``, the would-be uploaded) paths, relative to ``model_dir``.

    Raises:
        MedVQAUserError: bad folder, pickled weights, or (``PushFailed``) a Hub error, with the command to rerun.
    """
    check_repo_id(repo_id)
    plan = plan_push(model_dir)
    log(format_plan(plan, repo_id, public=public, revision=revision, dry_run=dry_run))
    if plan.blocking:
        names = ", ".join(n for n, _ in plan.blocking)
        raise MedVQAUserError(
            plan.model_dir, f"holds pickled weights ({names}); nothing was uploaded: {_PICKLE_FIX}"
        )
    if dry_run:
        log("dry run: nothing was sent")
        return list(plan.upload)

    from huggingface_hub import CommitOperationAdd

    rerun = rerun_command(model_dir, repo_id, public=public, revision=revision)
    stack = contextlib.ExitStack()
    try:
        api = api if api is not None else _default_api()
        api.create_repo(repo_id, private=not public, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        staging = stack.enter_context(tempfile.TemporaryDirectory(prefix="medvqa-push-"))
        operations = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=_staged(plan, rel, Path(staging)))
            for rel in plan.upload
        ]
        kind = "LoRA adapter" if plan.adapter_only else "model"
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=f"Upload medvqa {kind} ({len(operations)} files) with medvqa push",
            repo_type="model",
            revision=revision,
        )
    except Exception as exc:  # any Hub/network/auth error: one line, what happened and what to run again
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PushFailed(
            repo_id,
            f"upload failed ({exc.__class__.__name__}: {detail}); the local folder is unchanged and the Hub "
            f"repo got no partial commit; fix the cause (e.g. `hf auth login`, network) and rerun: {rerun}",
        ) from exc
    finally:
        stack.close()  # the sanitized copies go; the model folder was never written
    url = getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    log(f"pushed {len(plan.upload)} files to {url}")
    return list(plan.upload)


def _staged(plan: PushPlan, rel: str, staging: Path) -> str:
    """The local file to upload for ``rel``: its sanitized copy in ``staging``, else the folder's own file."""
    if rel not in plan.sanitized:
        return str(plan.model_dir / rel)
    copy = staging / rel
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_bytes(plan.sanitized[rel])
    return str(copy)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvqa push``."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="the model folder to upload (with --space: a Hub model id)",
    )
    parser.add_argument("--repo-id", metavar="ID", help="namespace/name on the Hugging Face Hub")
    parser.add_argument(
        "--space",
        metavar="REPO_ID",
        help="instead: create or update a Gradio Space running `medvqa app` on the Hub model --model",
    )
    parser.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be uploaded; contact nothing"
    )
    parser.add_argument(
        "--revision", metavar="BRANCH", help="branch to commit to (created if missing; default main)"
    )


def run(args: argparse.Namespace) -> int:
    """``medvqa push``."""
    if args.space:  # a Space for the app (hub_card/space.py), not a model upload
        if args.repo_id or args.revision:
            raise MedVQAUserError("--space", "give --space or --repo-id/--revision, not both")
        from hub_card.space import push_space

        push_space(args.space, args.model, public=args.public, dry_run=args.dry_run)
        return 0
    if not args.repo_id:
        raise MedVQAUserError("--repo-id", "required (or --space REPO_ID for the app's Space)")
    push_folder(args.model, args.repo_id, public=args.public, dry_run=args.dry_run, revision=args.revision)
    return 0
