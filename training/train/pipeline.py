"""The training pipeline: initial checkpoint, then the stages ``clip`` -> ``lora`` -> ``joint`` of a recipe.

Layout under the recipe's ``output_dir``::

    init/            the assembled starting checkpoint (``medvqa init``), unless model.init_checkpoint is given
    bases/           the tiny preset's BiomedCLIP and Llama stand-ins (tiny recipes only)
    clip/            checkpoints, open_clip/ (tuned BiomedCLIP), model/ (MedVQA with the tuned trunk)
    lora/, joint/    checkpoints, adapter/ (LoRA + projector [+ vision tower]), merged/ (last stage run)
    training_recipe.yaml, stages.json

Each stage starts from the previous stage's output when it exists, so ``--stage lora`` after ``--stage clip``
continues the chain, and ``--resume`` continues the current stage from its last complete checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError
from training.file_checks import why_not
from training.output_dir import prepare_output_dir
from training.train.recipe import STAGES, Recipe
from training.train.sft_stages import StageResult


def read_train_records(path: str | Path) -> tuple[list[dict[str, Any]], Path]:
    """Training records with image paths made absolute (relative paths are relative to the JSONL's folder)."""
    from training.data.records import read_records, resolve_image

    path = Path(path)
    if not path.is_file():  # checked before resolve(), which raises RuntimeError on a symlink loop
        raise MedVQAUserError(
            path, f"training data: {why_not(path)} (run `medvqa data convert` first, or fix data.train)"
        )
    path = path.resolve()  # absolute image paths: workers and later stages may run from another folder
    records = read_records(path)
    if not records:
        raise MedVQAUserError(path, "no records")
    return [{**r, "image": str(resolve_image(r, path))} for r in records], path.parent


def bases(recipe: Recipe) -> tuple[str, str]:
    """The vision (open_clip id) and text (Llama id or folder) bases; ``tiny`` builds local stand-ins."""
    out = Path(recipe.output_dir)
    vision, text = recipe.model.vision, recipe.model.text
    if "tiny" in (vision, text):
        from training.tiny import build_tiny_llama, build_tiny_open_clip

        work = out / "bases"
        if vision == "tiny":
            vision = f"local-dir:{work / 'tiny-biomedclip'}"
            if not (work / "tiny-biomedclip" / "open_clip_config.json").is_file():
                build_tiny_open_clip(work / "tiny-biomedclip")
        if text == "tiny":
            text = str(work / "tiny-llama3")
            if not (work / "tiny-llama3" / "config.json").is_file():
                build_tiny_llama(work / "tiny-llama3")
    return vision, text


def initial_checkpoint(recipe: Recipe) -> tuple[Path, str]:
    """Assemble (once, on the main process) the starting checkpoint; returns it and the open_clip id."""
    from training.init_checkpoint import assemble_checkpoint
    from training.train.zero import distributed_state

    state = distributed_state()
    out = Path(recipe.output_dir)
    with state.main_process_first():
        vision, text = bases(recipe)
        if recipe.model.init_checkpoint:
            return Path(recipe.model.init_checkpoint), vision
        init_dir = out / "init"
        if state.is_main_process and not (init_dir / "config.json").is_file():
            assemble_checkpoint(
                vision,
                text,
                init_dir,
                dtype=recipe.model.dtype,
                seed=recipe.seed,
                vision_feature_layer=recipe.model.vision_feature_layer,
            )
    return init_dir, vision


def run_training(
    recipe: Recipe,
    stages: list[str] | None = None,
    *,
    resume: bool = False,
    train_jsonl: str | Path | None = None,
    callbacks: list | None = None,
) -> dict[str, StageResult]:
    """Run the given stages (default: every enabled stage) in order; returns each stage's result."""
    import yaml

    from training.train.clip_stage import run_clip_stage
    from training.train.sft_stages import run_sft_stage
    from training.train.zero import distributed_state

    stages = stages or [s for s in STAGES if recipe.stage(s).enabled]
    state = distributed_state()
    records, records_base = read_train_records(train_jsonl or recipe.data.train)  # before anything is written
    # The main process checks and marks the folder first; the other ranks then find it marked by `train`.
    with state.main_process_first():
        out = prepare_output_dir(recipe.output_dir, "train")
    if state.is_main_process:
        (out / "training_recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    init_dir, vision_id = initial_checkpoint(recipe)

    results: dict[str, StageResult] = {}
    clip_model_dir = out / "clip" / "model"
    lora_adapter = out / "lora" / "adapter"
    for stage in stages:
        base_dir = clip_model_dir if (clip_model_dir / "config.json").is_file() else init_dir
        merge = stage == stages[-1] and stage != "clip"
        if stage == "clip":
            results[stage] = run_clip_stage(
                recipe, vision_id, init_dir, records, records_base, resume=resume, callbacks=callbacks
            )
        elif stage == "lora":
            results[stage] = run_sft_stage(
                recipe,
                "lora",
                base_dir,
                records,
                records_base,
                resume=resume,
                merge=merge,
                callbacks=callbacks,
            )
        elif stage == "joint":
            adapter = lora_adapter if (lora_adapter / "adapter_model.safetensors").is_file() else None
            results[stage] = run_sft_stage(
                recipe,
                "joint",
                base_dir,
                records,
                records_base,
                lora_adapter=adapter,
                resume=resume,
                merge=merge,
                callbacks=callbacks,
            )
        else:
            raise MedVQAUserError("--stage", f"unknown stage {stage!r}")
        if state.is_main_process:
            _record(out, results[stage])
    return results


def _record(out: Path, result: StageResult) -> None:
    """Append a stage's outcome to ``stages.json`` (what the model card and the demo read)."""
    path = out / "stages.json"
    done = json.loads(path.read_text()) if path.is_file() else {}
    done[result.stage] = {
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "losses": result.losses,
        "train_samples_per_second": result.train_samples_per_second,
        "train_runtime_s": result.train_runtime_s,
        "adapter_dir": str(result.adapter_dir) if result.adapter_dir else None,
        "merged_dir": str(result.merged_dir) if result.merged_dir else None,
        "model_dir": str(result.model_dir) if result.model_dir else None,
        "resumed_from": str(result.resumed_from) if result.resumed_from else None,
    }
    path.write_text(json.dumps(done, indent=2) + "\n")
