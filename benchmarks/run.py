"""Run the benchmarks: ``python -m benchmarks.run [--quick] [--out FILE] [--shape tiny|small|paper] [--shallow]``.

Every speed figure is printed next to a reference measured in the same process (transformers' LLaVA at the same
shapes, open_clip's transform, a bare pydicom pipeline, a large matmul for MFU); the conclusion is the ratio, never a
bare time.  Results go to ``benchmarks/results/<date>-<host>.json`` and to ``--out``.

* ``--quick``: tiny shapes, few repeats (about 2 minutes on 2 cores); ``--smoke``: one repeat of everything, for
  the test that keeps the script working.
* ``--shape paper``: ViT-B/16 + Llama-3-8B with random weights, bf16, SDPA, gradient checkpointing, the recipe's
  per-device batch; needs a CUDA GPU with room for both models (~80 GB).  On a CPU it refuses unless ``--shallow``
  (the paper's widths and vocabulary, 2 ViT blocks, 1 decoder layer, fp32).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
PAPER_RECIPE = Path(__file__).resolve().parent.parent / "configuration" / "recipes" / "paper_llama3_8b.yaml"
TINY_RECIPE = PAPER_RECIPE.with_name("tiny_cpu.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes, few repeats (~2 min on 2 cores)")
    parser.add_argument("--smoke", action="store_true", help="one repeat of everything (tests)")
    parser.add_argument("--out", type=Path, help="also write the results JSON here")
    parser.add_argument(
        "--shape", choices=["tiny", "small", "paper"], help="default: tiny with --quick, else small"
    )
    parser.add_argument(
        "--shallow", action="store_true", help="with --shape paper on CPU: 2 ViT blocks, 1 LM layer"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--only",
        default="train,generation,preprocess,memory",
        help="comma-separated sections to run (train, generation, preprocess, memory)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/")
    return parser.parse_args(argv)


def _small_spec():
    from training.tiny import TinySpec

    # ViT-S/16 at 224 px (196 image tokens, as the paper) + a 4-layer 512-wide Llama.
    return TinySpec(
        vision_model="vit_small_patch16_224",
        image_size=224,
        clip_embed_dim=64,
        text_hidden_size=512,
        text_intermediate_size=1536,
        text_layers=4,
        text_heads=8,
        text_kv_heads=2,
    )


def _recipe(checkpoint: Path, name: str, batch: int):
    import yaml

    from training.train.recipe import recipe_from_dict

    raw = yaml.safe_load(TINY_RECIPE.read_text())
    raw["name"] = name
    raw["model"]["init_checkpoint"] = str(checkpoint)
    raw["training"]["per_device_train_batch_size"] = batch
    raw["stages"]["lora"]["per_device_train_batch_size"] = batch
    return recipe_from_dict(raw, name)


def memory_section(work: Path, smoke: bool, log) -> dict[str, Any]:
    """Planner prediction vs measured CPU peak, lora stage, for the tiny recipe and a small one."""
    from benchmarks.memory import planner_vs_measured
    from training.tiny import TinySpec, save_tiny_model
    from training.train.recipe import load_recipe

    out: dict[str, Any] = {}
    cases = [("tiny_cpu", TinySpec(), None)] + ([] if smoke else [("small_cpu", _small_spec(), 8)])
    for name, spec, batch in cases:
        start = time.perf_counter()
        checkpoint = save_tiny_model(work / name / "model", spec)
        recipe = load_recipe(TINY_RECIPE) if name == "tiny_cpu" else _recipe(checkpoint, name, batch)
        for checkpointing in (False, True):
            key = f"{name}{'_checkpointing' if checkpointing else ''}"
            result = planner_vs_measured(
                checkpoint, recipe, "lora", steps=1 if smoke else 2, gradient_checkpointing=checkpointing
            )
            out[key] = result
            log(
                f"memory {key}: predicted {result['predicted_bytes'] / 2**20:.1f} MiB, measured "
                f"{result['measured_bytes'] / 2**20:.1f} MiB, error {100 * result['error']:+.1f}%"
            )
            if smoke:
                break
        log(f"  ({time.perf_counter() - start:.0f} s)")
    first = out["tiny_cpu"]
    return {
        "predicted_bytes": first["predicted_bytes"],
        "measured_bytes": first["measured_bytes"],
        "error": first["error"],
        "recipe": "tiny_cpu (lora stage)",
        "cases": out,
    }


def paper_plan() -> dict[str, Any]:
    """The planner's verdict for the paper's setup (2x A100 40GB), the figure the README quotes."""
    from training.train.planner import largest_fitting_batch, load_recipe, plan_memory

    recipe = load_recipe(PAPER_RECIPE)
    plan = plan_memory(recipe, "lora", 2, 40)
    return {
        "stage": "lora",
        "total_bytes": plan.total,
        "breakdown": plan.breakdown,
        "fits": plan.fits,
        "largest_batch": largest_fitting_batch(recipe, "lora", 2, 40),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from benchmarks.common import machine, quiet_libraries, versions

    quiet_libraries()
    import torch

    from benchmarks.models import get_shape

    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks: error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    shape_name = args.shape or ("tiny" if args.quick or args.smoke else "small")
    if shape_name == "paper" and device == "cpu" and not args.shallow:
        print(
            "benchmarks: error: --shape paper builds ViT-B/16 + Llama-3-8B twice (ours and LLaVA) and needs a CUDA GPU "
            "with ~80 GB; on a CPU add --shallow (the paper's widths with 2 ViT blocks and 1 decoder layer)",
            file=sys.stderr,
        )
        return 2
    from training.train.recipe import load_recipe

    recipe_batch = load_recipe(PAPER_RECIPE).stage_value("lora", "per_device_train_batch_size")
    shape = get_shape(shape_name, shallow=args.shallow and device == "cpu", recipe_batch=recipe_batch)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cuda" and shape_name == "paper":
        free, _ = torch.cuda.mem_get_info()
        if free < 70 * 2**30:
            print(
                f"benchmarks: error: --shape paper needs ~70 GiB free on the GPU, {free / 2**30:.0f} GiB are",
                file=sys.stderr,
            )
            return 2
    # A shared 2-core machine swings single steps by +-20%: enough repeats that the medians settle.
    repeats = 1 if args.smoke else (7 if args.quick else 15)
    peak_n = 8192 if device == "cuda" else (512 if args.smoke else 1024 if args.quick else 2048)
    sections = {s.strip() for s in args.only.split(",") if s.strip()}

    def log(message: str) -> None:
        print(message, flush=True)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": shape.name,
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "machine": machine(),
        "versions": versions(),
    }
    log(f"benchmarks: shape {shape.name}, {device}, {results['dtype']}, {repeats} repeats")
    # Preprocessing first, before any model exists: in training it runs in DataLoader worker processes, and our
    # path's large tensor allocations slow down measurably in a heap the model benchmarks have fragmented.
    with tempfile.TemporaryDirectory(prefix="medvqa-bench-") as tmp:
        work = Path(tmp)
        if "preprocess" in sections:
            from benchmarks.preprocess import dicom, preprocessing

            r = preprocessing(work, 1 if args.smoke else (5 if args.quick else 9))
            results["preprocess"] = r
            log(
                f"preprocess ({r['images']} images): ours {r['ours_images_per_s']:.1f} img/s, open_clip "
                f"{r['open_clip_images_per_s']:.1f} img/s, ratio {r['ratio']:.3f} (batched {r['batched']['ratio']:.3f}; "
                f"max |diff| vs open_clip {r['max_abs_diff_vs_open_clip']:.2g})"
            )
            d = dicom(1 if args.smoke else 3, n=10 if args.smoke else 50)
            results["dicom"] = d
            log(
                f"DICOM {d['file']}: ours {d['ours_images_per_s']:.0f} img/s, bare pydicom "
                f"{d['pydicom_reference_images_per_s']:.0f} img/s, ratio {d['ratio']:.3f}"
            )
    from benchmarks import speed

    if "train" in sections:
        r = speed.train_step(shape, dtype, device, repeats, peak_n)
        results["train_step"] = r
        log(
            f"train step (lora, batch {r['batch']}, {r['seq_len']} tokens): ours {r['ours_samples_per_s']:.2f} "
            f"samples/s, LLaVA {r['llava_samples_per_s']:.2f} samples/s, ratio ours/LLaVA {r['ratio']:.3f} "
            f"(paired median {r['ratio_paired_median']:.3f}, IQR {r['ratio_iqr'][0]:.3f}-{r['ratio_iqr'][1]:.3f}); MFU {100 * r['mfu']:.1f}% of a "
            f"{r['matmul_peak_flops'] / 1e9:.0f} GFLOP/s matmul"
        )
    if "generation" in sections:
        r = speed.generation(shape, dtype, device, repeats)
        results.update(r)
        g, i = r["generation"], r["image_reuse"]
        log(
            f"generation ({g['batch']} x {g['new_tokens']} new tokens): ours {g['ours_tokens_per_s']:.1f} tok/s, "
            f"LLaVA {g['llava_tokens_per_s']:.1f} tok/s, ratio {g['ratio']:.3f}"
        )
        log(
            f"image reuse k={i['k']}: encode once {1e3 * i['encode_once_s']:.1f} ms vs every time "
            f"{1e3 * i['encode_each_s']:.1f} ms, speedup {i['speedup']:.2f}x (one encoding "
            f"{1e3 * i['one_encoding_s']:.1f} ms + k text passes {1e3 * i['k_text_passes_s']:.1f} ms)"
        )
    with tempfile.TemporaryDirectory(prefix="medvqa-bench-") as tmp:
        work = Path(tmp)
        if "memory" in sections:
            if device == "cpu":
                results["planner"] = memory_section(work, args.smoke, log)
            else:
                results["planner"] = {
                    "predicted_bytes": None,
                    "measured_bytes": None,
                    "error": None,
                    "note": "measured on CPU only; run with --device cpu",
                }
            results["planner"]["paper_2x_a100_40gb"] = paper_plan()
    results["elapsed_s"] = time.perf_counter() - started
    log(f"done in {results['elapsed_s']:.0f} s")

    text = json.dumps(results, indent=2, default=str) + "\n"
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{dt.date.today().isoformat()}-{platform.node() or 'host'}.json"
        path.write_text(text)
        log(f"wrote {path}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
