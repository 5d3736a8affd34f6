"""``medvqa demo --out DIR``: the whole chain on the bundled samples with the tiny recipe, on a CPU.

samples -> convert + split + audit -> clip, lora, joint stages -> eval report with charts -> model card ->
Hub-ready folder (push dry run) -> reload through the Auto classes in a fresh process -> answer a question about
a held-out image.  Everything is real (the same code as a full run); only the models are tiny.

Outputs: ``DIR/data`` (samples, converted splits, audit), ``DIR/runs`` (training), ``DIR/eval`` (predictions,
report, charts), ``DIR/model`` (the Hub-ready folder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.cli_types import random_seed
from training.output_dir import MARKER, prepare_output_dir

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "configuration" / "recipes" / "tiny_cpu.yaml"
STEPS = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder (data, runs, eval, model)")
    parser.add_argument(
        "--recipe", type=Path, default=TINY_RECIPE, help="training recipe (default: tiny CPU)"
    )
    parser.add_argument("--seed", type=random_seed, default=0, help="split seed")


class _Steps:
    """Numbered progress lines with elapsed times."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.number = 0

    def run(self, title: str, fn: Callable[[], Any]) -> Any:
        self.number += 1
        print(f"\n[{self.number}/{STEPS}] {title}", flush=True)
        t0 = time.perf_counter()
        result = fn()
        print(
            f"      done in {time.perf_counter() - t0:.1f} s (total {time.perf_counter() - self.started:.0f} s)"
        )
        return result


def _quiet_libraries() -> None:
    """Keep the demo's own lines readable: transformers' per-call warnings and weight-loading bars off."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def run(args: argparse.Namespace) -> int:
    from hub_card.card import write_card
    from hub_card.push import push_folder
    from training.data.convert import convert_release
    from training.data.records import read_records
    from training.data.samples import build_samples
    from training.evaluation.evaluate import evaluate
    from training.train.pipeline import run_training
    from training.train.recipe import load_recipe

    _quiet_libraries()
    out: Path = prepare_output_dir(args.out, "demo").resolve()  # the fresh-process step runs from elsewhere
    steps = _Steps()
    data_dir, open_dir = out / "data" / "samples", out / "data" / "open"

    def samples_and_convert() -> dict:
        build_samples(data_dir)
        manifest = convert_release(data_dir, open_dir, seed=args.seed)
        print(
            f"      {manifest['input_rows']} questions -> {manifest['converted']} converted, "
            f"{manifest['needs_review']} need review, {manifest['rejected']} rejected; splits {manifest['splits']}"
        )
        audit = json.loads((open_dir / "audit.json").read_text())
        print(f"      no image in two splits: {_leakage_ok(audit)}; audit in {open_dir / 'audit.md'}")
        return manifest

    steps.run(
        "Sample set from real images in pydicom / nibabel / scikit-image, converted to open-ended",
        samples_and_convert,
    )

    recipe = load_recipe(args.recipe)
    recipe.output_dir = str(out / "runs" / recipe.name)

    def train() -> dict:
        results = run_training(recipe, train_jsonl=open_dir / "train.jsonl")
        for name, result in results.items():
            print(
                f"      {name:5s} loss {result.first_loss:.3f} -> {result.last_loss:.3f} "
                f"({len(result.losses)} logged steps, {result.train_samples_per_second or 0:.1f} samples/s)"
            )
        return results

    results = steps.run("Training: clip -> lora -> joint (tiny recipe, CPU)", train)
    last = results[list(results)[-1]]

    eval_dir = out / "eval"
    evaluation = steps.run(
        "Evaluation on the held-out test split (all scoring rules, Wilson 95% intervals, charts, image-blind run)",
        # --ablate-image blank: the same questions again with a black image, to show the model uses the image
        lambda: evaluate(
            last.merged_dir,
            open_dir / "test.jsonl",
            eval_dir,
            train=open_dir / "train.jsonl",
            ablate_image="blank",
        ),
    )
    print(f"      report: {eval_dir / 'report.md'}")

    model_dir = out / "model"

    def hub_folder() -> list[str]:
        # new, or the folder an earlier demo run made: only then are its old files cleared
        prepare_output_dir(model_dir, "demo")
        for child in model_dir.iterdir():
            if child.name != MARKER:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        shutil.copytree(last.merged_dir, model_dir, dirs_exist_ok=True)
        for name in ["report.json", "report.md", *[p.name for p in eval_dir.glob("*.png")]]:
            shutil.copy2(eval_dir / name, model_dir / name)
        shutil.copy2(Path(recipe.output_dir) / "training_recipe.yaml", model_dir / "training_recipe.yaml")
        card = write_card(
            model_dir,
            model_dir / "report.json",
            repo_id="your-name/medvqa-lite-tiny-demo",
            eval_dataset="medvqa-lite bundled samples (OmniMedVQA layout), held-out test split",
        )
        print(f"      model card: {card}")
        return push_folder(model_dir, "your-name/medvqa-lite-tiny-demo", dry_run=True, log=lambda s: None)

    uploaded = steps.run("Model card and Hub-ready folder (push dry run: nothing is sent)", hub_folder)
    print(f"      {len(uploaded)} files would be uploaded: {', '.join(sorted(uploaded))}")

    test = read_records(open_dir / "test.jsonl")
    sample = next((r for r in test if r["answer_type"] == "open"), test[0])
    image = (open_dir / sample["image"]).resolve()

    def reload_and_ask() -> str:
        # A fresh interpreter that loads the folder through the Auto classes with trust_remote_code, as a user would.
        cmd = [sys.executable, "-m", "training.cli", "ask", "--model", str(model_dir), "--image", str(image),
               "--question", sample["question"]]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"medvqa ask failed: {proc.stderr[-2000:]}")
        return proc.stdout.strip()

    answer = steps.run(
        "Reload through AutoModelForImageTextToText in a fresh process; ask about a held-out image",
        reload_and_ask,
    )
    print(f"      image: {image.name} ({sample['modality']}, from {sample['source']}, test split)")
    for line in answer.splitlines():
        print(f"      {line}")
    print(f"      ground truth: {sample['answer']}")

    steps.run("Results", lambda: _print_results(evaluation.report))
    print(f"\nOutputs: data {out / 'data'}, runs {out / 'runs'}, eval {eval_dir}, model {model_dir}")
    return 0


def _leakage_ok(audit: dict[str, Any]) -> bool:
    return bool(audit["leakage"]["ok"])


def _print_results(report: dict[str, Any]) -> None:
    """The paper's table for this run: accuracy, 95% CI and the majority-answer baseline side by side."""
    baselines = report.get("baselines", {}).get("majority_answer", {})

    def row(label: str, metric: dict[str, Any], baseline: dict[str, Any] | None) -> str:
        low, high = metric["ci95"]
        base = f"{100 * baseline['accuracy']:5.1f}" if baseline and baseline.get("n") else "    -"
        return f"      {label:26s} {metric['n']:4d}  {100 * metric['accuracy']:5.1f}  [{100 * low:4.1f}, {100 * high:4.1f}]  {base}"

    print(f"      {'':26s} {'n':>4s}  {'acc %':>5s}  {'95% CI':^12s}  majority %")
    print(row("overall", report["overall"], baselines))
    for key, label in (("yes_no", "yes/no"), ("open", "open")):
        print(row(label, report[key], baselines.get(key)))
    by_modality_base = baselines.get("by_modality", {})
    for name, metric in sorted(report.get("by_modality", {}).items()):
        print(row(f"  {name}", metric, by_modality_base.get(name)))
    _print_image_blind(report)
    rules = report.get("primary", {})
    print(f"      rules: yes/no -> {rules.get('yes_no')}, open -> {rules.get('open')}; intervals: Wilson 95%")
    for warning in report.get("warnings", []):
        print(f"      warning: {warning}")


def _print_image_blind(report: dict[str, Any]) -> None:
    """With the image vs image-blind on the same questions: accuracy, difference, 95% CI, McNemar p."""
    section = report.get("image_blind")
    if not section:
        return
    diff = section["paired_difference"]
    print(f"\n      with the image vs image-blind ({section['method']}: {section['description']})")
    print(
        f"      {'':26s} {'n':>4s}  {'image %':>7s}  {'blind %':>7s}  {'diff':>6s}  {'95% CI':^15s}  McNemar p"
    )
    rows = [("overall", diff["overall"]), ("yes/no", diff["yes_no"]), ("open", diff["open"])]
    rows += [(f"  {name}", d) for name, d in diff["by_question_type"].items()]
    for label, d in rows:
        if not d["n"]:
            continue
        low, high = d["ci95"]
        print(
            f"      {label:26s} {d['n']:4d}  {100 * d['real']:7.1f}  {100 * d['blind']:7.1f}  "
            f"{100 * d['difference']:+6.1f}  [{100 * low:+5.1f}, {100 * high:+5.1f}]  {d['mcnemar_p']:.2g}"
        )
