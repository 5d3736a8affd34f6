"""Measured peak memory of real training steps on CPU, against the planner's prediction.

What is measured: the peak of live bytes in torch's CPU allocator while a real ``SFTTrainer`` (the project's own
stage set-up: ``load_base``, ``build_peft_model``, ``training_arguments``, ``MedVQACollator``) runs a few
optimizer steps of a stage, plus the bytes of the model's parameters and buffers that exist before.  The allocator
figures come from the torch profiler's memory events (``profile_memory=True``: every allocation and free of the CPU
allocator, with its running total); they are what the GPU's caching allocator would hold for the same tensors,
without its fragmentation and the CUDA context.  Not counted: numpy/PIL buffers of the data loader (host memory on a
GPU machine too) and scratch memory that oneDNN/MKL take outside torch's allocator.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

QUESTIONS = (
    "Is this a CT image?",
    "Which organ is visible in this image? Is there a lesion in the image?",
)
ANSWERS = ("yes", "brain")


@dataclass
class PeakMeasurement:
    measured_bytes: int
    baseline_bytes: int
    allocator_peak_bytes: int
    layers_phase_bytes: int
    batch: int
    seq_len: int
    answer_tokens: float
    padded: bool
    steps: int


def _write_records(folder: Path, n: int, image_size: int = 256) -> list[dict[str, Any]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)).save(path)
        records.append(
            {
                "image": str(path),
                "question": QUESTIONS[i % 2],
                "answer": ANSWERS[i % 2],
                "answer_type": "open",
            }
        )
    return records


def _trace_peaks(trace_path: Path) -> tuple[int, int]:
    """Highest running total of the CPU allocator in a profiler chrome trace, overall and outside TRL's LM head.

    The second figure isolates the layers' phase (saved activations + backward working set), which the fused
    head's CPU tiles hide in the overall peak; on a GPU the head is small and that phase sets the peak.
    """
    events = json.loads(trace_path.read_text())["traceEvents"]
    memory = [
        e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    ]
    head = [
        (e["ts"], e["ts"] + e.get("dur", 0))
        for e in events
        if e.get("ph") == "X" and e.get("name", "").startswith("ChunkedLogProbFunction")
    ]
    overall = max((e["args"]["Total Allocated"] for e in memory), default=0)
    outside = max(
        (e["args"]["Total Allocated"] for e in memory if not any(a <= e["ts"] <= b for a, b in head)),
        default=0,
    )
    return overall, outside


def measure_training_peak(
    model_dir: str | Path,
    recipe,
    stage: str = "lora",
    *,
    steps: int = 2,
    per_device_batch: int | None = None,
    gradient_checkpointing: bool | None = None,
) -> PeakMeasurement:
    """Run ``steps`` optimizer steps of ``stage`` with SFTTrainer on CPU and return the measured peak."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import set_seed

    from training.train.sft_data import MedVQACollator, build_sft_dataset
    from training.train.sft_stages import (
        PROJECTOR,
        VISION,
        _sft_trainer_class,
        build_peft_model,
        load_base,
        training_arguments,
    )

    batch = int(per_device_batch or recipe.stage_value(stage, "per_device_train_batch_size"))
    checkpointing = (
        recipe.training.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = _write_records(tmp, batch * steps)
        set_seed(recipe.seed)
        model, processor = load_base(Path(model_dir), recipe)
        peft_model = build_peft_model(model, recipe, stage)
        collator = MedVQACollator(processor=processor, max_length=recipe.data.max_length)
        dataset = build_sft_dataset(records)
        # The sequence length and label count of the batches the trainer will see (same examples, same collator).
        sample = collator([dataset[i] for i in range(batch)])
        seq_len = int(sample["input_ids"].shape[1])
        answer_tokens = float((sample["labels"] != -100).sum()) / batch
        padded = bool((sample["attention_mask"] == 0).any())
        args = training_arguments(
            recipe,
            stage,
            tmp / "out",
            max_steps=steps,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            save_strategy="no",
            report_to=[],
            logging_steps=1000,
            logging_first_step=False,
            dataloader_num_workers=0,
            disable_tqdm=True,
            gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        )
        from transformers import PrinterCallback

        trainer = _sft_trainer_class()(
            model=peft_model,
            args=args,
            train_dataset=dataset,
            processing_class=processor,
            data_collator=collator,
        )
        trainer.remove_callback(PrinterCallback)  # keep the benchmark's output to its own lines
        s = recipe.stage(stage)
        trainer.module_learning_rates = {PROJECTOR: s.projector_learning_rate or s.learning_rate}
        if stage == "joint":
            trainer.module_learning_rates[VISION] = s.vision_learning_rate or s.learning_rate
        storages = {}
        for tensor in [*peft_model.parameters(), *peft_model.buffers()]:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        baseline = sum(storages.values())
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.train()
        trace = tmp / "trace.json"
        prof.export_chrome_trace(str(trace))
        allocator_peak, layers_phase = _trace_peaks(trace)
        del trainer, peft_model, model
        torch.set_grad_enabled(True)
    return PeakMeasurement(
        measured_bytes=baseline + allocator_peak,
        baseline_bytes=baseline,
        allocator_peak_bytes=allocator_peak,
        layers_phase_bytes=baseline + layers_phase,
        batch=batch,
        seq_len=seq_len,
        answer_tokens=answer_tokens,
        padded=padded,
        steps=steps,
    )


def planner_vs_measured(model_dir: str | Path, recipe, stage: str = "lora", **kwargs: Any) -> dict[str, Any]:
    """Measure a stage on CPU and plan the same run (``device="cpu"``, same batch and sequence length)."""
    from training.train.planner import plan_memory

    m = measure_training_peak(model_dir, recipe, stage, **kwargs)
    plan = plan_memory(
        recipe,
        stage,
        1,
        1024,
        m.batch,
        seq_len=m.seq_len,
        answer_tokens=max(1, round(m.answer_tokens)),
        gradient_checkpointing=kwargs.get("gradient_checkpointing"),
        padding_mask=m.padded,
        device="cpu",
    )
    b = plan.breakdown
    predicted_layers = b["weights"] + b["gradients"] + b["optimizer_states"] + b["activations"]
    return {
        "stage": stage,
        "predicted_bytes": plan.total,
        "measured_bytes": m.measured_bytes,
        "error": (plan.total - m.measured_bytes) / m.measured_bytes,
        "breakdown": plan.breakdown,
        "batch": m.batch,
        "seq_len": m.seq_len,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "layers_phase": {
            "predicted_bytes": predicted_layers,
            "measured_bytes": m.layers_phase_bytes,
            "error": (predicted_layers - m.layers_phase_bytes) / m.layers_phase_bytes,
        },
        "baseline_bytes": m.baseline_bytes,
        "allocator_peak_bytes": m.allocator_peak_bytes,
    }
