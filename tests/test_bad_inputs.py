"""Odd and hostile inputs to every command: each ends in exit status 2 and exactly one stderr line naming the input,
or is accepted with its post-condition checked (files untouched, nothing deleted, nothing leaked).

The table is :data:`CASES`: one :class:`Case` per input, built in a fresh ``tmp_path`` by its ``setup``, run through
``training.cli.main`` in-process (argparse's refusals arrive as ``SystemExit(2)``, caught here).  No case needs a
trained model: every refusal happens before a model is loaded, which is itself part of what is tested.
Images, DICOM/NIfTI and JSONL records have their own table in ``tests/test_bad_inputs_data.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.numpy import save_file

from training.cli import main
from training.errors import MedVQAUserError
from training.output_dir import MARKER

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "configuration" / "recipes" / "tiny_cpu.yaml"
DEEP_JSON = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit in json.loads
DICOM_BYTES = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\0"


# ------------------------------------------------------------------------------------------------ builders


def tree_state(root: Path) -> dict[str, str]:
    """Every path below ``root`` (links not followed) with a digest of its bytes: equal states = untouched."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                state[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                state[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                state[rel] = "dir"
    return state


def png(path: Path, size: tuple[int, int] = (32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.RandomState(0).rand(size[1], size[0], 3) * 255).astype("uint8")).save(path)
    return path


def records_file(folder: Path, n: int = 3, prediction: bool = False) -> Path:
    """A valid records JSONL over one PNG (relative image paths)."""
    png(folder / "images" / "a.png")
    rows = []
    for i in range(n):
        answer = ["yes", "no", "liver"][i % 3]
        row = {
            "question_id": str(i), "dataset": "VQA-RAD", "image": "images/a.png", "question": f"Question {i}?",
            "answer": answer, "answer_type": "yes_no" if answer in ("yes", "no") else "open", "modality": "CT",
            "modality_raw": "CT", "question_type": "Modality Recognition", "options": [], "source": "t",
            "split": "test",
        }  # fmt: skip
        if prediction:
            row["prediction"] = answer if i else "maybe"
        rows.append(row)
    path = folder / ("predictions.jsonl" if prediction else "records.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def weights(path: Path) -> Path:
    save_file({"w": np.ones((2, 2), np.float32)}, str(path))
    return path


def model_folder(root: Path, *, weights_kind: str = "safetensors", config: str | bytes | None = None) -> Path:
    """A folder that passes (or, by ``weights_kind``/``config``, fails) the model-folder check; never loaded."""
    d = root / "model"
    d.mkdir(parents=True)
    config = config if config is not None else json.dumps({"model_type": "medvqa"})
    (d / "config.json").write_bytes(config if isinstance(config, bytes) else config.encode())
    target = d / "model.safetensors"
    if weights_kind == "safetensors":
        weights(target)
    elif weights_kind == "empty":
        target.write_bytes(b"")
    elif weights_kind == "pickle":
        target.write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    elif weights_kind == "truncated":
        weights(target)
        target.write_bytes(target.read_bytes()[:20])
    elif weights_kind == "huge_header":
        target.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    elif weights_kind == "bin_only":
        (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}))
    return d


def text_base(root: Path, **kw: Any) -> Path:
    d = model_folder(root / "llama", config=json.dumps({"model_type": "llama"}), **kw)
    return d


def vision_base(root: Path, config: str = '{"model_cfg": {"embed_dim": 8}}') -> str:
    d = root / "clip"
    d.mkdir(parents=True)
    (d / "open_clip_config.json").write_text(config, encoding="utf-8")
    return f"local-dir:{d}"


def _clip_with(root: Path, weights_bytes: bytes) -> str:
    vision = vision_base(root)
    (root / "clip" / "open_clip_model.safetensors").write_bytes(weights_bytes)
    return vision


def _loop(root: Path) -> str:
    """A symlink that points at itself (ELOOP on every open)."""
    os.symlink(root / "loop", root / "loop")
    return str(root / "loop")


def _linked_folder(root: Path) -> Path:
    d = model_folder(root)
    os.symlink(d, root / "linked")
    return root / "linked"


def recipe(root: Path, text: str | None = None, encoding: str = "utf-8", **sections: Any) -> Path:
    """The tiny recipe with ``sections`` merged in (``key=value`` at the top, ``training={...}`` into a section)."""
    import yaml

    data = yaml.safe_load(TINY_RECIPE.read_text(encoding="utf-8"))
    data["output_dir"] = str(root / "run")
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = root / "recipe.yaml"
    path.write_bytes((text if text is not None else yaml.safe_dump(data)).encode(encoding))
    return path


def foreign_folder(path: Path) -> Path:
    """A folder the user owns: a release's Images/ and QA_information/ and a note."""
    (path / "Images" / "X").mkdir(parents=True)
    (path / "Images" / "X" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nuser pixels")
    (path / "QA_information" / "Open-access").mkdir(parents=True)
    (path / "QA_information" / "Open-access" / "X.json").write_text("[]")
    (path / "notes.txt").write_text("mine")
    return path


def regular_file(path: Path) -> Path:
    path.write_text("keep me")
    return path


def other_command_folder(path: Path, command: str = "eval") -> Path:
    path.mkdir(parents=True)
    (path / MARKER).write_text(json.dumps({"command": command}))
    (path / "report.json").write_text("{}")
    return path


def card_folder(root: Path) -> Path:
    d = model_folder(root)
    (d / "report.json").write_text(json.dumps({"overall": {"accuracy": 0.5, "n": 4, "ci95": [0.15, 0.85]}}))
    return d


# ---------------------------------------------------------------------------------------------------- table


@dataclass
class Case:
    """One input: ``setup(tmp)`` returns the argv (and may prepare files); ``names`` must appear in the one
    stderr line of a refusal; ``accept`` cases exit 0 and ``check(tmp, stdout)`` asserts their post-condition.
    ``keep`` names a path (relative to tmp) that must be byte-for-byte unchanged afterwards."""

    id: str
    setup: Callable[[Path], list[str]]
    names: str | Callable[[Path], str] = ""
    accept: bool = False
    check: Callable[[Path, str], None] | None = None
    keep: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _out(tmp: Path, kind: str) -> Path:
    """An --out target of a kind: a regular file, a user's folder, a symlink, a file as parent, another command's."""
    if kind == "file":
        return regular_file(tmp / "out.txt")
    if kind == "foreign":
        return foreign_folder(tmp / "release")
    if kind == "symlink":
        (tmp / "elsewhere").mkdir()
        os.symlink(tmp / "elsewhere", tmp / "link")
        return tmp / "link"
    if kind == "file_parent":
        return regular_file(tmp / "out.txt") / "sub"
    if kind == "other_command":
        return other_command_folder(tmp / "evalout")
    raise ValueError(kind)


_KEEP = {"file": "out.txt", "foreign": "release", "symlink": "elsewhere", "file_parent": "out.txt",
         "other_command": "evalout"}  # fmt: skip
_OUT_NAMES = {"file": "out.txt", "foreign": "release", "symlink": "link", "file_parent": "sub",
              "other_command": "evalout"}  # fmt: skip


def out_cases(command: str, argv: Callable[[Path, Path], list[str]], kinds: tuple[str, ...]) -> list[Case]:
    """The --out refusals of one command: every kind of folder it must not write into."""
    return [
        Case(
            f"{command.replace(' ', '-')}-out-{kind}",
            (lambda tmp, kind=kind: argv(tmp, _out(tmp, kind))),
            names=_OUT_NAMES[kind],
            keep=_KEEP[kind],
        )
        for kind in kinds
    ]


def _samples(tmp: Path, out: Path) -> list[str]:
    return ["data", "samples", "--out", str(out)]


def _convert(tmp: Path, out: Path) -> list[str]:
    (tmp / "rel").mkdir(exist_ok=True)
    return ["data", "convert", "--omnimedvqa", str(tmp / "rel"), "--out", str(out), "--skip-image-check"]


def _import(tmp: Path, out: Path) -> list[str]:
    (tmp / "slake").mkdir(exist_ok=True)
    return ["data", "import", "--format", "slake", "--path", str(tmp / "slake"), "--out", str(out)]


def _init(tmp: Path, out: Path) -> list[str]:
    return ["init", "--vision", vision_base(tmp), "--text", str(text_base(tmp)), "--out", str(out)]


def _train(tmp: Path, out: Path) -> list[str]:
    data = records_file(tmp / "data")
    r = recipe(tmp)
    return ["train", "--recipe", str(r), "--data", str(data), "--output-dir", str(out)]


def _eval(tmp: Path, out: Path, *extra: str) -> list[str]:
    data = records_file(tmp / "data")
    return ["eval", "--model", str(model_folder(tmp)), "--data", str(data), "--out", str(out), *extra]


def _score(tmp: Path, out: Path) -> list[str]:
    return ["score", "--predictions", str(records_file(tmp / "p", prediction=True)), "--out", str(out)]


def _demo(tmp: Path, out: Path) -> list[str]:
    return ["demo", "--out", str(out)]


def _ask(tmp: Path, *extra: str, model: Path | None = None) -> list[str]:
    image = png(tmp / "scan.png")
    model = model if model is not None else model_folder(tmp)
    return ["ask", "--model", str(model), "--image", str(image), "--question", "What is shown?", *extra]


def _init_vision(tmp: Path, config: str) -> list[str]:
    return [
        "init",
        "--vision",
        vision_base(tmp, config),
        "--text",
        str(text_base(tmp)),
        "--out",
        str(tmp / "o"),
    ]


def _recipe_with_vision(tmp: Path, config: str) -> Path:
    """The tiny recipe with ``model.vision`` pointing at a folder holding ``config`` as its open_clip_config."""
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe["model"]["vision"] = vision_base(tmp, config)
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def _plan(tmp: Path, *extra: str, recipe_path: Path | None = None) -> list[str]:
    return ["plan", "--recipe", str(recipe_path or TINY_RECIPE), "--gpus", "1", "--gpu-memory", "40", *extra]


def _push(tmp: Path, folder: Path, repo: str = "org/medvqa") -> list[str]:
    return ["push", "--model", str(folder), "--repo-id", repo, "--dry-run"]


def _train_recipe(tmp: Path, path: Path) -> list[str]:
    return ["train", "--recipe", str(path), "--data", str(records_file(tmp / "data"))]


def _unchanged_samples_release(tmp: Path, out: str) -> None:
    assert (tmp / "release" / "Images" / "X" / "a.png").exists()


def _samples_rerun(tmp: Path) -> list[str]:
    return ["data", "samples", "--out", str(tmp / "s")]


ALL_OUT = ("file", "foreign", "symlink", "file_parent", "other_command")
CASES: list[Case] = [
    # --- every command that writes a folder: only new, empty or own-marked folders
    *out_cases("data samples", _samples, ALL_OUT),
    *out_cases("data convert", _convert, ("file", "foreign", "other_command")),
    *out_cases("data import", _import, ("file", "foreign")),
    *out_cases("init", _init, ("file", "foreign", "symlink")),
    *out_cases("train", _train, ("file", "foreign", "other_command")),
    *out_cases("eval", _eval, ("file", "foreign", "symlink")),
    *out_cases("score", _score, ("file", "foreign", "file_parent", "other_command")),
    *out_cases("demo", _demo, ("file", "foreign")),
    # --- numeric and choice options: refused by argparse with the option named
    Case(
        "samples-seed-negative",
        lambda t: ["data", "samples", "--out", str(t / "s"), "--seed", "-1"],
        "--seed",
    ),
    Case(
        "samples-seed-text", lambda t: ["data", "samples", "--out", str(t / "s"), "--seed", "abc"], "--seed"
    ),
    Case("convert-val-ratio-1.5", lambda t: [*_convert(t, t / "o"), "--val-ratio", "1.5"], "--val-ratio"),
    Case("convert-val-ratio-nan", lambda t: [*_convert(t, t / "o"), "--val-ratio", "nan"], "--val-ratio"),
    Case(
        "convert-test-ratio-negative",
        lambda t: [*_convert(t, t / "o"), "--test-ratio", "-0.1"],
        "--test-ratio",
    ),
    Case("convert-seed-2**40", lambda t: [*_convert(t, t / "o"), "--seed", str(2**40)], "--seed"),
    Case(
        "convert-missing-root",
        lambda t: ["data", "convert", "--omnimedvqa", str(t / "nope"), "--out", str(t / "o")],
        "nope",
    ),  # fmt: skip
    Case(
        "import-missing-path",
        lambda t: ["data", "import", "--format", "vqa-rad", "--path", str(t / "nope"), "--out", str(t / "o")],
        "nope",
    ),  # fmt: skip
    Case(
        "import-bad-format",
        lambda t: ["data", "import", "--format", "mimic", "--path", str(t), "--out", str(t / "o")],
        "--format",
    ),  # fmt: skip
    Case("init-seed-negative", lambda t: [*_init(t, t / "o"), "--seed", "-5"], "--seed"),
    Case(
        "init-feature-layer-text",
        lambda t: [*_init(t, t / "o"), "--vision-feature-layer", "abc"],
        "--vision-feature-layer",
    ),  # fmt: skip
    Case("init-dtype-float8", lambda t: [*_init(t, t / "o"), "--dtype", "float8"], "--dtype"),
    Case("plan-batch-0", lambda t: _plan(t, "--batch", "0"), "--batch"),
    Case("plan-seq-len-0", lambda t: _plan(t, "--seq-len", "0"), "--seq-len"),
    Case(
        "plan-gpu-memory-inf",
        lambda t: ["plan", "--recipe", str(TINY_RECIPE), "--gpus", "1", "--gpu-memory", "inf"],
        "--gpu-memory",
    ),  # fmt: skip
    Case(
        "plan-gpu-memory-nan",
        lambda t: ["plan", "--recipe", str(TINY_RECIPE), "--gpus", "1", "--gpu-memory", "nan"],
        "--gpu-memory",
    ),  # fmt: skip
    Case(
        "plan-gpu-memory-negative",
        lambda t: ["plan", "--recipe", str(TINY_RECIPE), "--gpus", "1", "--gpu-memory", "-40"],
        "--gpu-memory",
    ),  # fmt: skip
    Case(
        "plan-gpus-0",
        lambda t: ["plan", "--recipe", str(TINY_RECIPE), "--gpus", "0", "--gpu-memory", "40"],
        "--gpus",
    ),  # fmt: skip
    Case("plan-nodes-0", lambda t: _plan(t, "--nodes", "0"), "--nodes"),
    Case("plan-batch-5000-digits", lambda t: _plan(t, "--batch", "9" * 5000), "--batch"),
    Case("eval-batch-size-negative", lambda t: _eval(t, t / "o", "--batch-size", "-1"), "--batch-size"),
    Case("eval-limit-0", lambda t: _eval(t, t / "o", "--limit", "0"), "--limit"),
    Case(
        "eval-max-new-tokens-1e3", lambda t: _eval(t, t / "o", "--max-new-tokens", "1e3"), "--max-new-tokens"
    ),
    Case("eval-device-banana", lambda t: _eval(t, t / "o", "--device", "banana"), "--device"),
    Case("ask-max-new-tokens-0", lambda t: _ask(t, "--max-new-tokens", "0"), "--max-new-tokens"),
    Case("ask-frame-negative", lambda t: _ask(t, "--frame", "-1"), "--frame"),
    Case("ask-axis-3", lambda t: _ask(t, "--axis", "3"), "--axis"),
    Case("demo-seed-negative", lambda t: ["demo", "--out", str(t / "d"), "--seed", "-1"], "--seed"),
    Case("app-port-0", lambda t: ["app", "--model", str(t), "--port", "0"], "--port"),
    Case("app-port-70000", lambda t: ["app", "--model", str(t), "--port", "70000"], "--port"),
    Case("app-concurrency-0", lambda t: ["app", "--model", str(t), "--concurrency", "0"], "--concurrency"),
    Case(
        "app-queue-size-negative", lambda t: ["app", "--model", str(t), "--queue-size", "-1"], "--queue-size"
    ),
    Case(
        "app-max-new-tokens-0",
        lambda t: ["app", "--model", str(t), "--max-new-tokens", "0"],
        "--max-new-tokens",
    ),
    Case(
        "compare-resamples-0",
        lambda t: ["compare", "a", "b", "--out", str(t / "o"), "--resamples", "0"],
        "--resamples",
    ),
    # --- recipes: one line naming the file and the key
    Case("recipe-seed-abc", lambda t: _train_recipe(t, recipe(t, seed="abc")), "seed"),
    Case("recipe-stages-list", lambda t: _train_recipe(t, recipe(t, stages=["clip", "lora"])), "stages"),
    Case(
        "recipe-latin-1",
        lambda t: _train_recipe(t, recipe(t, text="name: caf\xe9\noutput_dir: x\n", encoding="latin-1")),
        "UTF-8",
    ),  # fmt: skip
    Case(
        "recipe-batch-sixteen",
        lambda t: _train_recipe(t, recipe(t, training={"per_device_train_batch_size": "sixteen"})),
        "per_device_train_batch_size",
    ),  # fmt: skip
    Case(
        "recipe-batch-0",
        lambda t: _train_recipe(t, recipe(t, training={"per_device_train_batch_size": 0})),
        "per_device_train_batch_size",
    ),  # fmt: skip
    Case(
        "recipe-batch-negative",
        lambda t: _train_recipe(t, recipe(t, stages={"lora": {"per_device_train_batch_size": -4}})),
        "per_device_train_batch_size",
    ),  # fmt: skip
    Case(
        "recipe-lr-fast",
        lambda t: _train_recipe(t, recipe(t, stages={"joint": {"learning_rate": "fast"}})),
        "learning_rate",
    ),  # fmt: skip
    Case("recipe-dtype-float8", lambda t: _train_recipe(t, recipe(t, model={"dtype": "float8"})), "dtype"),
    Case(
        "recipe-unknown-key",
        lambda t: _train_recipe(t, recipe(t, training={"per_device_batch": 3})),
        "per_device_batch",
    ),  # fmt: skip
    Case("recipe-top-level-list", lambda t: _train_recipe(t, recipe(t, text="- name\n- x\n")), "recipe.yaml"),
    Case("recipe-is-a-folder", lambda t: ["train", "--recipe", str(t)], lambda t: str(t)),
    Case("recipe-missing", lambda t: ["train", "--recipe", str(t / "none.yaml")], "none.yaml"),
    Case(
        "recipe-epochs-nan",
        lambda t: _train_recipe(t, recipe(t, stages={"clip": {"num_train_epochs": float("nan")}})),
        "num_train_epochs",
    ),  # fmt: skip
    Case("recipe-dropout-1.5", lambda t: _train_recipe(t, recipe(t, lora={"dropout": 1.5})), "dropout"),
    Case(
        "recipe-optim-unknown",
        lambda t: _train_recipe(t, recipe(t, training={"optim": "adamw_fake"})),
        "optim",
    ),
    Case(
        "recipe-clip-text-field",
        lambda t: _train_recipe(t, recipe(t, data={"clip_text": "{foo}"})),
        "clip_text",
    ),  # fmt: skip
    Case(
        "recipe-deep-yaml",
        lambda t: _train_recipe(t, recipe(t, text="name: " + "[" * 5000 + "]" * 5000)),
        "recipe.yaml",
    ),  # fmt: skip
    Case("recipe-bad-yaml", lambda t: _train_recipe(t, recipe(t, text="name: [unclosed\n")), "YAML"),
    Case("recipe-name-empty", lambda t: _train_recipe(t, recipe(t, name="")), "name"),
    Case(
        "recipe-zero-stage-1", lambda t: _train_recipe(t, recipe(t, training={"zero_stage": 1})), "zero_stage"
    ),
    Case("recipe-bool-batch", lambda t: _train_recipe(t, recipe(t, training={"num_gpus": True})), "num_gpus"),
    Case(
        "plan-recipe-batch-0",
        lambda t: _plan(t, recipe_path=recipe(t, training={"per_device_train_batch_size": 0})),
        "per_device_train_batch_size",
    ),  # fmt: skip
    # --- model folders (eval / ask / init): config.json and safetensors checked before anything loads
    Case(
        "eval-device-cuda-without-gpu",
        lambda t: _eval(t, t / "o", "--device", "cuda"),
        "--device",
        extra={"needs_no_cuda": True},
    ),  # fmt: skip
    Case(
        "eval-model-bin-only",
        lambda t: [
            "eval",
            "--model",
            str(model_folder(t, weights_kind="bin_only")),
            "--data",
            str(records_file(t / "d")),
            "--out",
            str(t / "o"),
        ],
        "pytorch_model.bin",
    ),  # fmt: skip
    Case("eval-model-empty-safetensors", lambda t: _eval_model(t, weights_kind="empty"), "model.safetensors"),
    Case(
        "eval-model-pickled-safetensors", lambda t: _eval_model(t, weights_kind="pickle"), "model.safetensors"
    ),
    Case(
        "eval-model-truncated-safetensors",
        lambda t: _eval_model(t, weights_kind="truncated"),
        "model.safetensors",
    ),  # fmt: skip
    Case("eval-model-huge-header", lambda t: _eval_model(t, weights_kind="huge_header"), "model.safetensors"),
    Case("eval-config-not-json", lambda t: _eval_model(t, config="{model_type: medvqa"), "config.json"),
    Case("eval-config-deep", lambda t: _eval_model(t, config=DEEP_JSON), "config.json"),
    Case(
        "eval-config-latin-1",
        lambda t: _eval_model(t, config='{"model_type": "caf\xe9"}'.encode("latin-1")),
        "config.json",
    ),  # fmt: skip
    Case("eval-config-array", lambda t: _eval_model(t, config="[1, 2]"), "config.json"),
    Case(
        "eval-model-is-a-file",
        lambda t: [
            "eval",
            "--model",
            str(regular_file(t / "m.txt")),
            "--data",
            str(records_file(t / "d")),
            "--out",
            str(t / "o"),
        ],
        "m.txt",
    ),  # fmt: skip
    Case(
        "ask-model-bin-only",
        lambda t: _ask(t, model=model_folder(t, weights_kind="bin_only")),
        "pytorch_model.bin",
    ),  # fmt: skip
    Case(
        "ask-model-empty-safetensors",
        lambda t: _ask(t, model=model_folder(t, weights_kind="empty")),
        "model.safetensors",
    ),  # fmt: skip
    Case("ask-config-deep", lambda t: _ask(t, model=model_folder(t, config=DEEP_JSON)), "config.json"),
    Case(
        "init-text-bin-only",
        lambda t: [
            "init",
            "--vision",
            vision_base(t),
            "--text",
            str(text_base(t, weights_kind="bin_only")),
            "--out",
            str(t / "o"),
        ],
        "pytorch_model.bin",
    ),  # fmt: skip
    Case(
        "init-text-empty-safetensors",
        lambda t: [
            "init",
            "--vision",
            vision_base(t),
            "--text",
            str(text_base(t, weights_kind="empty")),
            "--out",
            str(t / "o"),
        ],
        "model.safetensors",
    ),  # fmt: skip
    Case(
        "init-text-config-not-json",
        lambda t: [
            "init",
            "--vision",
            vision_base(t),
            "--text",
            str(model_folder(t, config="{")),
            "--out",
            str(t / "o"),
        ],
        "config.json",
    ),  # fmt: skip
    Case("init-open-clip-config-no-model-cfg", lambda t: _init_vision(t, "{}"), "model_cfg"),
    Case(
        "init-open-clip-weights-pickle",
        lambda t: [
            "init",
            "--vision",
            _clip_with(t, pickle.dumps([1])),
            "--text",
            str(text_base(t)),
            "--out",
            str(t / "o"),
        ],
        "open_clip_model.safetensors",
    ),
    Case("init-open-clip-config-deep", lambda t: _init_vision(t, DEEP_JSON), "open_clip_config.json"),
    Case(
        "init-open-clip-config-image-size-string",
        lambda t: _init_vision(t, '{"model_cfg": {"embed_dim": 8, "vision_cfg": {"image_size": "big"}}}'),
        "model_cfg.vision_cfg.image_size",
    ),
    Case(
        "init-open-clip-config-image-size-10e12",
        lambda t: _init_vision(
            t, '{"model_cfg": {"embed_dim": 8, "vision_cfg": {"image_size": 1000000000000}}}'
        ),
        "at most 4096",
    ),
    Case(
        "plan-open-clip-config-vision-cfg-list",
        lambda t: _plan(
            t, recipe_path=_recipe_with_vision(t, '{"model_cfg": {"embed_dim": 8, "vision_cfg": []}}')
        ),
        "model_cfg.vision_cfg",
    ),
    # --- card: never overwrites a README it did not write; broken inputs named
    Case("card-user-readme", lambda t: _card(t, readme="# my notes\n"), "README.md", keep="model"),
    Case("card-readme-symlink", lambda t: _card(t, readme_link=True), "README.md", keep="target.md"),
    Case("card-report-not-json", lambda t: _card(t, report="{oops"), "report.json", keep="model"),
    Case("card-report-deep", lambda t: _card(t, report=DEEP_JSON), "report.json", keep="model"),
    Case(
        "card-recipe-latin-1",
        lambda t: _card(t, recipe_bytes="name: caf\xe9\n".encode("latin-1")),
        "recipe.yaml",
    ),  # fmt: skip
    Case(
        "card-model-missing",
        lambda t: ["card", "--model", str(t / "nope"), "--report", str(t / "r.json")],
        "nope",
    ),  # fmt: skip
    Case("card-config-deep", lambda t: _card(t, config=DEEP_JSON), "config.json", keep="model"),
    # --- push: links, content, weights, repo ids
    Case(
        "push-dicom-named-png",
        lambda t: _push(t, _push_folder(t, {"chart.png": DICOM_BYTES})),
        "chart.png",
        keep="model",
    ),  # fmt: skip
    Case(
        "push-pickle-named-safetensors",
        lambda t: _push(t, _push_folder(t, weights_kind="pickle")),
        "model.safetensors",
    ),  # fmt: skip
    Case(
        "push-empty-safetensors",
        lambda t: _push(t, _push_folder(t, weights_kind="empty")),
        "model.safetensors",
    ),
    Case(
        "push-truncated-safetensors",
        lambda t: _push(t, _push_folder(t, weights_kind="truncated")),
        "model.safetensors",
    ),  # fmt: skip
    Case(
        "push-pickle-named-json",
        lambda t: _push(t, _push_folder(t, {"report.json": pickle.dumps([1])})),
        "report.json",
    ),  # fmt: skip
    Case("push-repo-dotdot", lambda t: _push(t, _push_folder(t), repo="../.."), "../.."),
    Case("push-repo-three-parts", lambda t: _push(t, _push_folder(t), repo="a/b/c"), "a/b/c"),
    Case("push-config-not-json", lambda t: _push(t, _push_folder(t, {"config.json": b"{"})), "config.json"),
    Case(
        "push-config-symlink",
        lambda t: _push(t, _push_folder(t, link_config=True)),
        "config.json: is a symbolic",
    ),
    Case(
        "push-shard-index-deep",
        lambda t: _push(t, _push_folder(t, {"model.safetensors.index.json": DEEP_JSON.encode()})),
        "model.safetensors.index.json",
    ),  # fmt: skip
    Case(
        "push-space-id-double-dash",
        lambda t: ["push", "--space", "a--b/app", "--model", "org/m", "--dry-run"],
        "a--b/app",
    ),
    Case(
        "push-space-model-dotdot",
        lambda t: ["push", "--space", "org/app", "--model", "org/m..x", "--dry-run"],
        "org/m..x",
    ),
    # --- file-system oddities on user paths: symlink loops, folders for files, files for folders
    Case(
        "train-data-symlink-loop",
        lambda t: ["train", "--recipe", str(recipe(t)), "--data", _loop(t)],
        "Too many levels of symbolic links",
    ),
    Case(
        "train-data-is-a-folder",
        lambda t: ["train", "--recipe", str(recipe(t)), "--data", str(t)],
        "is a folder, not a file",
    ),
    Case(
        "recipe-symlink-loop", lambda t: ["train", "--recipe", _loop(t)], "Too many levels of symbolic links"
    ),
    Case("plan-recipe-is-a-folder", lambda t: _plan(t, recipe_path=t), "not a regular file"),
    Case(
        "eval-model-symlink-loop",
        lambda t: ["eval", "--model", _loop(t), "--data", str(records_file(t / "d")), "--out", str(t / "o")],
        "Too many levels of symbolic links",
    ),
    Case("ask-model-is-a-file", lambda t: _ask(t, model=regular_file(t / "m.txt")), "m.txt"),
    Case(
        "card-report-is-a-folder",
        lambda t: ["card", "--model", str(card_folder(t)), "--report", str(t)],
        "is a folder, not a file",
    ),
    Case(
        "card-model-is-a-file",
        lambda t: ["card", "--model", str(regular_file(t / "m.txt")), "--report", str(t / "r.json")],
        "is a file, not a folder",
    ),
    Case("card-recipe-symlink-loop", lambda t: [*_card(t), "--recipe", _loop(t)], "Too many levels"),
    Case("push-model-is-a-file", lambda t: _push(t, regular_file(t / "m.txt")), "is a file, not a folder"),
    Case(
        "score-predictions-is-a-folder",
        lambda t: ["score", "--predictions", str(t), "--out", str(t / "o")],
        lambda t: str(t),
    ),
    # --- accepted, with their post-conditions
    Case(
        "push-model-folder-given-as-a-link",
        lambda t: _push(t, _linked_folder(t)),
        accept=True,
        check=lambda t, out: _would_upload(out, "model.safetensors"),
    ),  # the folder you name; links inside: never
    Case("samples-rerun-own-folder", _samples_rerun, accept=True, check=lambda t, out: _rerun_samples(t)),
    Case(
        "score-new-then-same-folder",
        lambda t: _score(t, t / "scores"),
        accept=True,
        check=lambda t, out: _rerun_score(t),
    ),  # fmt: skip
    Case(
        "card-own-readme-rewritten",
        lambda t: _card(t, readme="previous"),
        accept=True,
        check=lambda t, out: _card_rewritten(t),
    ),  # fmt: skip
    Case(
        "card-dicom-named-png-not-embedded",
        lambda t: _card(t, files={"chart.png": DICOM_BYTES}),
        accept=True,
        check=lambda t, out: _card_without(t, "chart.png"),
    ),  # fmt: skip
    Case(
        "push-readme-symlink-left-home",
        lambda t: _push(t, _push_folder(t, link_readme=True)),
        accept=True,
        check=lambda t, out: _listed_as_link(out, "README.md"),
    ),  # fmt: skip
    Case(
        "push-local-paths-removed",
        lambda t: _push(t, _push_folder(t, local_path_config=True)),
        accept=True,
        check=lambda t, out: _paths_removed(t, out),
    ),  # fmt: skip
    Case(
        "push-bare-repo-name-is-the-users-namespace",
        lambda t: _push(t, _push_folder(t), repo="medvqa"),
        accept=True,
        check=lambda t, out: _would_upload(out, "model.safetensors"),
    ),  # fmt: skip
    Case(
        "convert-ratio-zero",
        lambda t: _convert_samples(t, "--val-ratio", "0"),
        accept=True,
        check=lambda t, out: _converted(t),
    ),  # fmt: skip
]


def _eval_model(tmp: Path, **kw: Any) -> list[str]:
    d = model_folder(tmp, **kw)
    return ["eval", "--model", str(d), "--data", str(records_file(tmp / "d")), "--out", str(tmp / "o")]


def _card(
    tmp: Path,
    *,
    readme: str | None = None,
    readme_link: bool = False,
    report: str | None = None,
    recipe_bytes: bytes | None = None,
    config: str | None = None,
    files: dict[str, bytes] | None = None,
) -> list[str]:
    from hub_card.card import CARD_MARKER

    d = card_folder(tmp)
    if config is not None:
        (d / "config.json").write_text(config)
    if readme is not None:
        (d / "README.md").write_text(readme if readme == "# my notes\n" else f"old card\n{CARD_MARKER}\n")
    if readme_link:
        (tmp / "target.md").write_text("someone else's file")
        os.symlink(tmp / "target.md", d / "README.md")
    if report is not None:
        (d / "report.json").write_text(report)
    for name, data in (files or {}).items():
        (d / name).write_bytes(data)
    argv = ["card", "--model", str(d), "--report", str(d / "report.json")]
    if recipe_bytes is not None:
        (tmp / "recipe.yaml").write_bytes(recipe_bytes)
        argv += ["--recipe", str(tmp / "recipe.yaml")]
    return argv


def _push_folder(
    tmp: Path,
    files: dict[str, bytes] | None = None,
    *,
    weights_kind: str = "safetensors",
    link_config: bool = False,
    link_readme: bool = False,
    local_path_config: bool = False,
) -> Path:
    d = model_folder(tmp, weights_kind=weights_kind)
    (d / "README.md").write_text("---\nlicense: llama3\n---\n# card\n")
    for name, data in (files or {}).items():
        (d / name).write_bytes(data)
    if link_config:
        (d / "config.json").unlink()
        os.symlink("/etc/passwd", d / "config.json")
    if link_readme:
        (d / "README.md").unlink()
        os.symlink("/etc/hostname", d / "README.md")
    if local_path_config:
        (d / "config.json").write_text(json.dumps({"model_type": "medvqa", "_name_or_path": f"{tmp}/runs/x"}))
    return d


def _rerun_samples(tmp: Path) -> None:
    before = tree_state(tmp / "s")
    assert main(["data", "samples", "--out", str(tmp / "s")]) == 0  # its own folder: accepted again
    assert tree_state(tmp / "s") == before  # same seed, same files; nothing else deleted or added


def _rerun_score(tmp: Path) -> None:
    out = tmp / "scores"
    assert (out / "report.json").is_file() and (out / MARKER).is_file()
    (out / "mine.txt").write_text("a note the user added")
    assert main(_score(tmp, out)) == 0
    assert (out / "mine.txt").read_text() == "a note the user added"


def _card_rewritten(tmp: Path) -> None:
    from hub_card.card import CARD_MARKER

    text = (tmp / "model" / "README.md").read_text()
    assert "old card" not in text and text.rstrip().endswith(CARD_MARKER)


def _card_without(tmp: Path, name: str) -> None:
    assert name not in (tmp / "model" / "README.md").read_text()
    assert (tmp / "model" / name).read_bytes() == DICOM_BYTES


def _listed_as_link(out: str, name: str) -> None:
    assert f"  {name}  symbolic link" in out
    upload = out.split("would upload")[1].split("left out")[0]
    assert f"  {name}  " not in upload


def _would_upload(out: str, name: str) -> None:
    assert f"  {name}  " in out.split("would upload")[1].split("left out")[0]


def _paths_removed(tmp: Path, out: str) -> None:
    from hub_card.push import plan_push

    assert "local paths removed" in out
    plan = plan_push(tmp / "model")
    uploaded = json.loads(plan.sanitized["config.json"])
    assert str(tmp) not in json.dumps(uploaded) and uploaded["_name_or_path"] == "<local path>"
    assert str(tmp) in (tmp / "model" / "config.json").read_text()  # the folder itself is untouched


def _convert_samples(tmp: Path, *extra: str) -> list[str]:
    from training.data.samples import build_samples

    build_samples(tmp / "s")
    return ["data", "convert", "--omnimedvqa", str(tmp / "s"), "--out", str(tmp / "o"), "--skip-image-check",
            *extra]  # fmt: skip


def _converted(tmp: Path) -> None:
    manifest = json.loads((tmp / "o" / "manifest.json").read_text())
    assert manifest["splits"]["val"] == 0 and manifest["converted"] > 0
    assert (tmp / "s" / "Images").is_dir()  # the release it read is untouched


# ----------------------------------------------------------------------------------------------------- run


def run_cli(argv: list[str]) -> int:
    try:
        return int(main(argv))
    except SystemExit as exc:  # argparse's refusals (training/cli_types.py), status 2
        return int(exc.code or 0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if case.extra.get("needs_no_cuda"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    argv = case.setup(tmp_path)
    before = tree_state(tmp_path / case.keep) if case.keep and (tmp_path / case.keep).is_dir() else None
    kept_file = (tmp_path / case.keep) if case.keep and (tmp_path / case.keep).is_file() else None
    kept_bytes = kept_file.read_bytes() if kept_file else None
    capsys.readouterr()
    code = run_cli(argv)
    out, err = capsys.readouterr()
    if case.accept:
        assert code == 0, err
        if case.check:
            case.check(tmp_path, out)
        return
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    names = case.names(tmp_path) if callable(case.names) else case.names
    assert names in lines[0], (names, lines[0])
    if before is not None:
        assert tree_state(tmp_path / case.keep) == before
    if kept_file is not None:
        assert kept_file.read_bytes() == kept_bytes


def test_the_table_covers_every_command_and_60_cases() -> None:
    commands = {c.id.split("-")[0] for c in CASES}
    assert {"samples", "data", "convert", "import", "init", "train", "plan", "eval", "score", "ask", "card",
            "push", "demo", "recipe"} <= commands | {"data"}  # fmt: skip
    assert len(CASES) >= 60


# --------------------------------------------------------------------------------------- property-based


_yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=20)
)
_yaml_values = st.recursive(
    _yaml_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_section_keys = st.sampled_from(
    ["per_device_train_batch_size", "learning_rate", "dtype", "seed", "r", "dropout", "optim", "max_steps",
     "num_train_epochs", "clip_text", "target_modules", "enabled", "max_length", "zero_stage", "bogus"]
)  # fmt: skip
_recipes = st.fixed_dictionaries(
    {"name": st.one_of(st.just("r"), _yaml_scalars), "output_dir": st.one_of(st.just("o"), _yaml_scalars)},
    optional={
        "seed": _yaml_values,
        "model": st.dictionaries(_section_keys, _yaml_values, max_size=3) | _yaml_values,
        "training": st.dictionaries(_section_keys, _yaml_values, max_size=3) | _yaml_values,
        "lora": st.dictionaries(_section_keys, _yaml_values, max_size=3),
        "data": st.dictionaries(_section_keys, _yaml_values, max_size=3),
        "stages": st.dictionaries(
            st.sampled_from(["clip", "lora", "joint", "x"]),
            st.dictionaries(_section_keys, _yaml_values, max_size=3) | _yaml_values,
            max_size=3,
        )
        | _yaml_values,  # fmt: skip
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_recipes)
def test_recipe_parser_never_crashes(raw: dict[str, Any]) -> None:
    """Whatever a YAML file can hold, the parser returns a recipe or raises MedVQAUserError, nothing else."""
    from training.train.recipe import recipe_from_dict

    try:
        recipe = recipe_from_dict(raw, "r.yaml")
    except MedVQAUserError as exc:
        assert "\n" not in str(exc)
        return
    # accepted: every value has its declared type and range
    assert isinstance(recipe.seed, int) and 0 <= recipe.seed < 2**32
    assert recipe.training.per_device_train_batch_size >= 1
    for stage in recipe.stages.values():
        assert stage.learning_rate > 0


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.text(max_size=200), st.text(alphabet="0123456789 .-,/yesnoYESNO", max_size=60))
)
def test_answer_normaliser_never_crashes(text: str | None) -> None:
    """Any string (or None) normalises to a string, idempotently."""
    from training.evaluation.normalize import normalize, normalized_tokens

    once = normalize(text)
    assert isinstance(once, str) and isinstance(normalized_tokens(text), list)
    assert normalize(once) == once


def test_console_script_error_is_the_only_stderr_line(tmp_path: Path) -> None:
    """In a real process, libraries imported on the way (transformers, bitsandbytes' CPU-kernel notice) print
    nothing before the error line: warnings are held during a command and dropped when it fails."""
    import subprocess
    import sys

    bad = recipe(tmp_path, training={"optim": "adamw_fake"})  # checked against transformers' optimizer names
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "always"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "train", "--recipe", str(bad)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim" in lines[0] and str(bad) in lines[0], proc.stderr


def test_error_after_the_model_loaded_is_still_the_only_line(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A corrupt image is found only when its batch is built, after the model loaded: no loading bar and no
    transformers warning comes before the error line, and the output folder holds no predictions."""
    data = records_file(tmp_path / "d")
    (tmp_path / "d" / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)  # a PNG in name only
    capsys.readouterr()
    code = run_cli(
        ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "a.png" in err and not (tmp_path / "o" / "predictions.jsonl").exists()


def test_os_error_on_a_named_path_is_one_line_and_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The boundary's safety net: IsADirectory/ELOOP/... on a path become one line; an OSError without a path
    (a bug, or the library's own trouble) is not swallowed."""
    import errno

    import training.evaluation.score_cli as score_cli

    def is_a_directory(args: Any) -> int:
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "/data/predictions.jsonl")

    monkeypatch.setattr(score_cli, "run", is_a_directory)
    assert run_cli(["score", "--predictions", "p.jsonl", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err == "medvqa score: error: /data/predictions.jsonl: Is a directory\n"

    def bug(args: Any) -> int:
        raise OSError("something internal")

    monkeypatch.setattr(score_cli, "run", bug)
    with pytest.raises(OSError, match="internal"):
        run_cli(["score", "--predictions", "p.jsonl", "--out", "o"])


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"per_device_batch": 0}, "--batch"),
        ({"seq_len": 0}, "--seq-len"),
        ({"gpu_memory_gb": math.inf}, "--gpu-memory"),
    ],
)
def test_planner_refuses_instead_of_substituting_defaults(kwargs: dict[str, Any], option: str) -> None:
    """Called as a library too, a 0 batch or sequence is refused, never replaced by the recipe's value."""
    from training.train.planner import plan_memory
    from training.train.recipe import load_recipe

    args = {"gpu_memory_gb": 40.0, **kwargs}
    with pytest.raises(MedVQAUserError, match=option):
        plan_memory(load_recipe(TINY_RECIPE), "lora", 1, device="cpu", **args)
