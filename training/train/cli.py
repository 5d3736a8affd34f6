"""``medvqa train``: run a recipe's training stages (also under ``accelerate launch``)."""

from __future__ import annotations

import argparse

from training.train.recipe import STAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe YAML (configuration/recipes/*.yaml)")
    parser.add_argument("--stage", default="all", choices=[*STAGES, "all"], help="one stage, or all in order")
    parser.add_argument(
        "--resume", action="store_true", help="continue each stage from its last complete checkpoint"
    )
    parser.add_argument("--data", default=None, help="training JSONL (overrides the recipe's data.train)")
    parser.add_argument("--output-dir", default=None, help="overrides the recipe's output_dir")


def run(args: argparse.Namespace) -> int:
    from training.train.pipeline import run_training
    from training.train.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.output_dir:
        recipe.output_dir = args.output_dir
    stages = None if args.stage == "all" else [args.stage]
    results = run_training(recipe, stages, resume=args.resume, train_jsonl=args.data)
    from accelerate import PartialState

    if not PartialState().is_main_process:  # under `accelerate launch`, one summary, not one per rank
        return 0
    for name, result in results.items():
        print(
            f"stage {name}: loss {result.first_loss:.4f} -> {result.last_loss:.4f}, "
            f"{result.train_samples_per_second or 0:.1f} samples/s, outputs in {result.output_dir}"
        )
    return 0
