"""Generate answers for a JSONL file with a model folder and score them: predictions.jsonl, scored.jsonl,
report.json, report.md and charts.

Answers come from batched greedy generation with the prompt template stored with the model (the one training
used: ``processor.apply_chat_template``); nothing of the prompt is repeated here. Records with options also get
OmniMedVQA's prefix-based choice (``mc_prefix_score``): the option whose tokens get the lowest mean loss after
the question. Scoring and the report are ``training.evaluation.report``, shared with ``medvqa score``.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from training.cli_types import positive_int
from training.data.records import resolve_image
from training.errors import MedVQAUserError
from training.evaluation.records_io import read_jsonl, read_jsonl_lines, write_jsonl
from training.file_checks import check_model_folder
from training.output_dir import prepare_output_dir
from training.prompts import user_messages

DATA_FIELDS = ("question", "answer", "image")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medvqa eval``."""
    parser.add_argument("--model", required=True, type=Path, help="model folder (Hub layout)")
    parser.add_argument("--data", required=True, type=Path, help="JSONL records (DESIGN.md §4)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="questions per generate call (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=positive_int, default=32, help="answer length limit (default 32)"
    )
    parser.add_argument(
        "--train", type=Path, default=None, help="training JSONL: majority baseline and seen/novel templates"
    )
    parser.add_argument("--limit", type=positive_int, default=None, help="evaluate only the first N records")
    parser.add_argument(
        "--mc-prefix",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also rank the options of multiple-choice records by mean token loss (mc_prefix_score)",
    )
    parser.add_argument(
        "--ablate-image",
        choices=("blank", "shuffle"),
        default=None,
        help="also answer every question image-blind (blank: a black image; shuffle: another test image of a "
        "different source) and report real - blind with a 95%% CI and McNemar p (report key image_blind)",
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="weights dtype (default: as saved)")


def run(args: argparse.Namespace) -> int:
    """``medvqa eval``: generate, score, write; prints the headline numbers."""
    from training.evaluation.score_cli import print_summary

    result = evaluate(
        args.model,
        args.data,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        train=args.train,
        limit=args.limit,
        mc_prefix=args.mc_prefix,
        device=args.device,
        dtype=args.dtype,
        ablate_image=args.ablate_image,
    )
    print_summary(result.report, args.out)
    return 0


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    train: str | Path | None = None,
    limit: int | None = None,
    mc_prefix: bool = True,
    device: str | None = None,
    dtype: str = "auto",
    ablate_image: str | None = None,
):
    """Evaluate ``model_dir`` on the records of ``data`` and write every output into ``out_dir``.

    ``ablate_image`` ("blank" / "shuffle"): also answer every question with the image replaced and add
    ``image_blind`` to the report (``training.evaluation.ablation``).

    Returns the :class:`~training.evaluation.report.ScoreResult` (scored records and the report dict).

    Raises:
        MedVQAUserError: bad numbers, a missing model folder, unreadable records or images.
    """
    from training.evaluation.report import score_records, write_outputs

    for name, value in (
        ("--batch-size", batch_size),
        ("--max-new-tokens", max_new_tokens),
        ("--limit", limit),
    ):
        if value is not None and value < 1:
            raise MedVQAUserError(name, f"must be at least 1, got {value}")
    model_dir, data = Path(model_dir), Path(data)
    check_model_folder(model_dir)
    device = resolve_device(device)
    lines = read_jsonl_lines(data, required=DATA_FIELDS, limit=limit, schema=True)
    records = [record for _, record in lines]
    if not records:
        raise MedVQAUserError(data, "no records")
    train_records = read_jsonl(train, required=("answer",)) if train else None
    loader = ImageLoader(data)
    loader.check_exist(lines, data)  # fail before the (slow) model load
    blind_images = None
    if ablate_image:
        from training.evaluation.ablation import BlindImages

        blind_images = BlindImages(loader, records, ablate_image)  # a bad method or one source: fail early
    out = prepare_output_dir(out_dir, "eval")

    model, processor = load_model(model_dir, device=device, dtype=dtype)
    start = time.perf_counter()
    answers = generate_answers(
        model, processor, records, loader, batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    seconds = time.perf_counter() - start
    throughput: dict[str, Any] = {
        "questions_per_s": round(len(records) / seconds, 4) if seconds > 0 else 0.0,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "max_new_tokens": max_new_tokens,
        "device": str(model.device),
    }
    predictions = [{**record, "prediction": answer} for record, answer in zip(records, answers)]
    if mc_prefix:
        start = time.perf_counter()
        losses = option_losses(model, processor, records, loader, batch_size=batch_size)
        throughput["mc_prefix_seconds"] = round(time.perf_counter() - start, 3)
        for prediction, record_losses in zip(predictions, losses):
            if record_losses is not None:
                # an empty option has no tokens to score: its loss is infinite, written as null
                prediction["mc_prefix_losses"] = [
                    None if math.isinf(x) else round(x, 6) for x in record_losses
                ]
                # first option with the lowest mean loss, as the difflib rule breaks ties towards the first
                prediction["mc_prefix_choice"] = min(range(len(record_losses)), key=record_losses.__getitem__)

    blind_predictions = None
    if blind_images is not None:
        start = time.perf_counter()
        blind_answers = generate_answers(
            model, processor, records, blind_images, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        throughput["image_blind_seconds"] = round(time.perf_counter() - start, 3)
        blind_predictions = [
            {**record, "prediction": answer, "image_blind": blind_images.describe(record)}
            for record, answer in zip(records, blind_answers)
        ]

    write_jsonl(out / "predictions.jsonl", predictions)
    result = score_records(predictions, train_records, throughput=throughput)
    if blind_predictions is not None:
        from training.evaluation.ablation import add_image_blind

        add_image_blind(result, blind_predictions, ablate_image, out, train_records)
    write_outputs(result, out)
    return result


# --- model, prompts, images -----------------------------------------------------------------------------------


def resolve_device(device: str | None) -> str:
    """``device`` checked against this machine (default: cuda when available, else cpu).

    Raises:
        MedVQAUserError: not a torch device string, or a CUDA/MPS device this machine does not have.
    """
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise MedVQAUserError("--device", f"{device!r} is not a torch device ({exc})") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise MedVQAUserError("--device", f"{device!r}: no CUDA GPU is available on this machine")
        if parsed.index is not None and parsed.index >= count:
            raise MedVQAUserError("--device", f"{device!r}: this machine has {count} CUDA GPU(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise MedVQAUserError("--device", f"{device!r}: MPS is not available on this machine")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise MedVQAUserError("--device", f"{device!r}: use cpu, cuda or cuda:N")
    return device


def load_model(model_dir: str | Path, device: str | None = None, dtype: str = "auto"):
    """The model (eval mode, on ``device``) and its processor, both from the folder's remote code.

    Weights load from safetensors only (``use_safetensors=True``): a folder with only ``pytorch_model.bin`` is
    refused rather than unpickled.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = resolve_device(device)
    if Path(model_dir).exists():
        check_model_folder(model_dir)
    kwargs: dict[str, Any] = {"trust_remote_code": True, "use_safetensors": True}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir), **kwargs).to(device).eval()
        processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=True)
    except OSError as exc:  # transformers' "missing file" / unreachable Hub id; the first line says which
        raise MedVQAUserError(model_dir, f"cannot load the model ({str(exc).splitlines()[0]})") from None
    return model, processor


class ImageLoader:
    """Loads records' images with the medical image loader; relative paths are relative to the JSONL's folder.
    Keeps the last few images, since several questions often share one image."""

    def __init__(self, jsonl_path: str | Path) -> None:
        self.jsonl_path = Path(jsonl_path)
        self._load = functools.lru_cache(maxsize=64)(self._load_path)

    def _load_path(self, path: str):
        from training.images import load_medical_image

        return load_medical_image(path, keep_gray=True)  # the processor resizes gray first

    def path(self, record: Mapping[str, Any]) -> Path:
        """The record's image path, relative paths taken from the JSONL's folder."""
        return resolve_image(record, self.jsonl_path)

    def check_exist(self, lines: Sequence[tuple[int, Mapping[str, Any]]], source: str | Path) -> None:
        """Raise a user error naming ``source:line`` of the first record whose image file does not exist."""
        for lineno, record in lines:
            path = self.path(record)
            if not path.is_file():
                raise MedVQAUserError(f"{source}:{lineno}", f"image {path}: no such file")

    def __call__(self, record: Mapping[str, Any]):
        return self._load(str(self.path(record)))


def _batches(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# --- generation -----------------------------------------------------------------------------------------------


def generate_answers(
    model,
    processor,
    records: Sequence[Mapping[str, Any]],
    loader: ImageLoader,
    *,
    batch_size: int,
    max_new_tokens: int,
) -> list[str]:
    """Greedy answers for ``records``, ``batch_size`` at a time (the processor pads on the left)."""
    import torch

    answers: list[str] = []
    for batch in _batches(records, batch_size):
        prompts = [
            processor.apply_chat_template(user_messages(r["question"]), add_generation_prompt=True)
            for r in batch
        ]
        inputs = processor(images=[loader(r) for r in batch], text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        answers.extend(text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True))
    return answers


# --- OmniMedVQA's prefix-based score ----------------------------------------------------------------------------


def _option_completion(processor, prefix: str, question: str, option: str) -> tuple[str, str]:
    """(completion text, its end-of-turn suffix) of ``option`` as the assistant answer, from the model's template.

    The completion is what the template adds after the generation prompt, tokenized on its own as TRL does in
    training; the suffix (``<|eot_id|>``) is excluded from the option's loss.
    """
    answer = [{"role": "assistant", "content": [{"type": "text", "text": option}]}]
    full = processor.apply_chat_template(user_messages(question) + answer, add_generation_prompt=False)
    text = option.strip()  # the template trims message text
    if not full.startswith(prefix) or not full[len(prefix) :].startswith(text):
        raise RuntimeError("the chat template's answer turn does not extend its generation prompt")
    completion = full[len(prefix) :]
    return completion, completion[len(text) :]


def option_losses(
    model, processor, records: Sequence[Mapping[str, Any]], loader: ImageLoader, *, batch_size: int
) -> list[list[float] | None]:
    """Mean token loss of each option after its question (``None`` for records without options).

    Each row is [prompt with image][option tokens][end of turn], right-padded so that positions are those of an
    unpadded sequence; the loss is the mean negative log-likelihood of the option's own tokens. Rows of
    several records share a forward pass, ``batch_size`` rows at a time.
    """
    import torch

    rows: list[tuple[int, str, str, str]] = []  # (record index, prompt, completion, suffix)
    for index, record in enumerate(records):
        prefix = processor.apply_chat_template(user_messages(record["question"]), add_generation_prompt=True)
        for option in record.get("options") or []:
            completion, suffix = _option_completion(processor, prefix, record["question"], str(option))
            rows.append((index, prefix, completion, suffix))

    losses: list[list[float] | None] = [None] * len(records)
    backbone = getattr(model, model.base_model_prefix)
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else 0
    for batch in _batches(rows, batch_size):
        prompts = processor(
            images=[loader(records[i]) for i, *_ in batch],
            text=[prefix for _, prefix, _, _ in batch],
            return_tensors="pt",
            padding=True,
            padding_side="right",
        )
        # completions on their own, without BOS, as TRL's prompt-completion collator tokenizes them
        completions = processor(text=[c for _, _, c, _ in batch], add_special_tokens=False)["input_ids"]
        suffixes = processor(text=[s for *_, s in batch], add_special_tokens=False)["input_ids"]
        prompt_lens = prompts["attention_mask"].sum(dim=1).tolist()
        sequences = [
            prompts["input_ids"][row, :plen].tolist() + list(comp)
            for row, (plen, comp) in enumerate(zip(prompt_lens, completions))
        ]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            attention_mask[row, : len(seq)] = 1
        # option token positions: after the prompt, before the end-of-turn suffix
        spans = [
            (plen, plen + len(comp) - len(suf)) for plen, comp, suf in zip(prompt_lens, completions, suffixes)
        ]
        with torch.inference_mode():
            hidden = backbone(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                pixel_values=prompts["pixel_values"].to(model.device, model.dtype),
                use_cache=False,
            ).last_hidden_state
            for row, (start, end) in enumerate(spans):
                if end <= start:  # an empty option: nothing to score
                    value = float("inf")
                else:
                    # the token at t is predicted from position t - 1; only these rows of the LM head are computed
                    logits = model.lm_head(hidden[row, start - 1 : end - 1]).float()
                    targets = input_ids[row, start:end].to(logits.device)
                    value = torch.nn.functional.cross_entropy(logits, targets).item()
                index = batch[row][0]
                losses[index] = (losses[index] or []) + [value]
    return losses
