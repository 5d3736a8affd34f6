"""Generate answers for a JSONL file with any image-text-to-text model (a folder or a Hub id) and score them:
predictions.jsonl, scored.jsonl, report.json, report.md and charts.

Answers come from batched greedy generation (left padding) with the prompt template stored with the model
(``processor.apply_chat_template``; for MedVQA the one training used), asked in the ``--prompt`` mode of
``prompting``; models load through ``vlm_loading`` and report.json names them (``model``). Records with options also get
OmniMedVQA's prefix-based choice (``mc_prefix_score``): the option whose tokens get the lowest mean loss after
the question, among the release's raw option strings when the record keeps them. Scoring and the report are
``training.evaluation.report``, shared with ``medvqa score``.
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
from training.evaluation import prompting
from training.evaluation.records_io import read_jsonl, read_jsonl_lines, write_jsonl
from training.evaluation.scorers import mc_options
from training.evaluation.vlm_loading import DTYPES, check_model_source, describe_model, load_vlm
from training.output_dir import prepare_output_dir
from training.prompts import user_messages  # noqa: F401  (tests build reference prompts from it)
from training.quantization import add_quantize_argument

DATA_FIELDS = ("question", "answer", "image")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``medvqa eval``."""
    parser.add_argument(
        "--model",
        default=None,
        help="model folder or Hub id of any image-text-to-text model (or --baselines)",
    )
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
    parser.add_argument(
        "--prompt",
        choices=prompting.PROMPT_MODES,
        default="open",
        help="open: the question as our model is asked it; mc: OmniMedVQA's multiple-choice prompt with the options",
    )
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model")
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run code shipped inside the checkpoint (off by default)",
    )
    parser.add_argument(
        "--adapter", default=None, help=f"family quirk adapter ({', '.join(sorted(prompting.ADAPTERS))})"
    )
    from training.evaluation.baselines import add_baseline_arguments

    add_baseline_arguments(parser)
    add_quantize_argument(parser)


def run(args: argparse.Namespace) -> int:
    """``medvqa eval``: generate, score, write; prints the headline numbers."""
    from training.evaluation.baselines import run_baselines
    from training.evaluation.score_cli import print_summary

    if args.baselines is not None or args.only:
        return run_baselines(args)
    if args.model is None:
        raise MedVQAUserError("--model", "give a model folder or Hub id (or --baselines FILE --only NAME)")
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
        prompt=args.prompt,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        adapter=args.adapter,
        quantize=args.quantize,
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
    prompt: str = "open",
    revision: str | None = None,
    trust_remote_code: bool = False,
    adapter: str | None = None,
    baseline: Mapping[str, Any] | None = None,
    quantize: str | None = None,
):
    """Evaluate ``model_dir`` (a folder or Hub id) on the records of ``data`` and write every output into ``out_dir``.

    ``ablate_image`` ("blank" / "shuffle"): also answer every question with the image replaced and add
    ``image_blind`` to the report (``training.evaluation.ablation``).

    Returns the :class:`~training.evaluation.report.ScoreResult` (scored records and the report dict).

    Raises:
        MedVQAUserError: bad numbers, a missing model folder or Hub id, unreadable records or images.
    """
    from training.evaluation.report import score_records, write_outputs

    for name, value in (
        ("--batch-size", batch_size),
        ("--max-new-tokens", max_new_tokens),
        ("--limit", limit),
    ):
        if value is not None and value < 1:
            raise MedVQAUserError(name, f"must be at least 1, got {value}")
    prompting.question_text({"question": ""}, prompt)  # an unknown mode fails here, before any loading
    quirk = prompting.get_adapter(adapter)
    data = Path(data)
    check_model_source(model_dir, revision=revision, trust_remote_code=trust_remote_code)
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

    def prepare(processor) -> None:
        prompting.apply_adapter(processor, quirk)
        with_options = next((r for r in records if r.get("options")), None)
        # a template that cannot score options is refused before the weights load
        if mc_prefix and with_options is not None:
            question = prompting.question_text(with_options, prompt)
            prefix = prompting.render(processor, question)
            _option_completion(processor, prefix, question, mc_options(with_options)[0])

    model, processor = load_vlm(
        model_dir,
        device=device,
        dtype=dtype,
        revision=revision,
        trust_remote_code=trust_remote_code,
        prepare_processor=prepare,
        quantize=quantize,
    )
    loader.keep_gray = accepts_gray(processor)
    start = time.perf_counter()
    answers = generate_answers(
        model, processor, records, loader, batch_size=batch_size, max_new_tokens=max_new_tokens, prompt=prompt
    )
    seconds = time.perf_counter() - start
    throughput: dict[str, Any] = {
        "questions_per_s": round(len(records) / seconds, 4) if seconds > 0 else 0.0,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "max_new_tokens": max_new_tokens,
        "device": str(model.device),
        "quantize": quantize,
    }
    predictions = [{**record, "prediction": answer} for record, answer in zip(records, answers)]
    if mc_prefix:
        start = time.perf_counter()
        losses = option_losses(model, processor, records, loader, batch_size=batch_size, prompt=prompt)
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
            model,
            processor,
            records,
            blind_images,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            prompt=prompt,
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
    result.report["model"] = {
        **describe_model(model_dir, model, processor, revision=revision, trust_remote_code=trust_remote_code),
        "adapter": quirk.name if quirk else None,
        "prompt": prompt,
        "generation": {
            "do_sample": False, "num_beams": 1, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "padding_side": "left", "mc_prefix": mc_prefix,
        },
        **({"baseline": dict(baseline)} if baseline else {}),
    }  # fmt: skip
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


def load_model(
    model_dir: str | Path,
    device: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    quantize: str | None = None,
):
    """The model (eval mode, on ``device``) and its processor, through ``vlm_loading.load_vlm`` (safetensors
    weights only; a local folder is checked first, an unreachable Hub id is a user error).

    The one inference loader (``eval``, ``ask``, ``app``); ``quantize`` (``"4bit"`` / ``"8bit"``) loads the language
    model's decoder layers through bitsandbytes (:mod:`training.quantization`)."""
    device = resolve_device(device)
    check_model_source(model_dir, trust_remote_code=trust_remote_code)
    return load_vlm(
        model_dir, device=device, dtype=dtype, trust_remote_code=trust_remote_code, quantize=quantize
    )


def accepts_gray(processor) -> bool:
    """Whether the processor takes 8-bit gray images as they are (MedVQA's resizes them before converting to
    RGB); every other processor gets RGB images, as their image processors expect."""
    from modeling_medvqa.processing_medvqa import MedVQAProcessor

    return isinstance(processor, MedVQAProcessor)


class ImageLoader:
    """Loads records' images with the medical image loader (DICOM/NIfTI included) as PIL images; relative paths
    are relative to the JSONL's folder. Keeps the last few images, since several questions often share one image.
    ``keep_gray``: hand 8-bit gray images over in mode L (only for a processor that takes them)."""

    def __init__(self, jsonl_path: str | Path, keep_gray: bool = True) -> None:
        self.jsonl_path = Path(jsonl_path)
        self.keep_gray = keep_gray
        self._load = functools.lru_cache(maxsize=64)(self._load_path)

    def _load_path(self, path: str, keep_gray: bool):
        from training.images import load_medical_image

        return load_medical_image(path, keep_gray=keep_gray)

    def path(self, record: Mapping[str, Any]) -> Path:
        """The record's image path, relative paths taken from the JSONL's folder."""
        return resolve_image(record, self.jsonl_path)

    def group_key(self, record: Mapping[str, Any]) -> str:
        """Records with equal keys share one image (eval shares one image prefix among their questions)."""
        return str(self.path(record))

    def check_exist(self, lines: Sequence[tuple[int, Mapping[str, Any]]], source: str | Path) -> None:
        """Raise a user error naming ``source:line`` of the first record whose image file does not exist."""
        for lineno, record in lines:
            path = self.path(record)
            if not path.is_file():
                why = (
                    "is a directory"
                    if path.is_dir()
                    else "not a regular file"
                    if path.exists()
                    else "no such file"
                )
                raise MedVQAUserError(f"{source}:{lineno}", f"image {path}: {why}")

    def __call__(self, record: Mapping[str, Any]):
        return self._load(str(self.path(record)), self.keep_gray)


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
    prompt: str = "open",
) -> list[str]:
    """Greedy answers for ``records`` asked in ``prompt`` mode, ``batch_size`` questions per ``generate`` call.

    ``loader(record)`` gives a record's image and ``loader.group_key(record)`` says which records share one
    (:class:`ImageLoader`, or the image-blind loader of ``--ablate-image``).

    MedVQA models: questions are grouped by image (OmniMedVQA asks several per image) so that a batch holds as few
    distinct images as possible, and each distinct image's prompt prefix is prefilled once and shared by its
    questions (:mod:`training.shared_prefix`).  Other families: one left-padded batch per call.  Answers come back
    in the records' order.
    """
    import torch

    from training.shared_prefix import generate_with_shared_prefix, supports_shared_prefix

    if supports_shared_prefix(model):
        keys = [loader.group_key(r) for r in records]
        first_seen = {key: i for i, key in reversed(list(enumerate(keys)))}
        order = sorted(range(len(records)), key=lambda i: (first_seen[keys[i]], i))
        shared: list[str] = [""] * len(records)
        for batch in _batches(order, batch_size):
            distinct = list(dict.fromkeys(keys[i] for i in batch))
            images = [loader(records[next(i for i in batch if keys[i] == key)]) for key in distinct]
            texts = generate_with_shared_prefix(
                model,
                processor,
                images,
                [prompting.render(processor, prompting.question_text(records[i], prompt)) for i in batch],
                [distinct.index(keys[i]) for i in batch],
                max_new_tokens=max_new_tokens,
            )
            for i, text in zip(batch, texts):
                shared[i] = text
        return shared

    answers: list[str] = []
    for batch in _batches(records, batch_size):
        texts = [prompting.render(processor, prompting.question_text(r, prompt)) for r in batch]
        inputs = prompting.encode(processor, [loader(r) for r in batch], texts, padding_side="left")
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
    training; the suffix (``<|eot_id|>``, ``<end_of_turn>``, ...) is excluded from the option's loss.
    """
    full = prompting.render(processor, question, answer=option)
    text = option.strip()  # templates trim message text
    if not full.startswith(prefix) or text not in full[len(prefix) :]:
        raise MedVQAUserError(
            "--mc-prefix",
            "this model's chat template does not write an answer right after its generation prompt, so options "
            "cannot be scored by their loss; run with --no-mc-prefix",
        )
    completion = full[len(prefix) :]
    # a template may put a space before the answer (LLaVA's "ASSISTANT: answer"); byte-level BPE glues it to the
    # option's first token, so it is scored with the option
    return completion, completion[completion.index(text) + len(text) :]


def option_losses(
    model,
    processor,
    records: Sequence[Mapping[str, Any]],
    loader: ImageLoader,
    *,
    batch_size: int,
    prompt: str = "open",
) -> list[list[float] | None]:
    """Mean token loss of each option after its question (``None`` for records without options). The options are
    those ``mc_qa_score`` compares with (``scorers.mc_options``): the release's raw strings when the record keeps
    them, so ``mc_prefix_choice`` indexes those.

    Each row is [prompt with image][option tokens][end of turn], right-padded so that positions are those of an
    unpadded sequence; the loss is the mean negative log-likelihood of the option's own tokens. Rows of
    several records share a forward pass, ``batch_size`` rows at a time; the LM head runs only on the positions
    that predict option tokens (``logits_to_keep``). Per-token inputs of the processor besides the ids
    (Gemma 3's ``token_type_ids``, Qwen2-VL's ``mm_token_type_ids``) are extended with zeros over the answer.
    """
    import torch

    rows: list[tuple[int, str, str, str]] = []  # (record index, prompt, completion, suffix)
    for index, record in enumerate(records):
        if not record.get("options"):
            continue
        question = prompting.question_text(record, prompt)
        prefix = prompting.render(processor, question)
        # the options mc_qa_score compares with: the release's raw strings when kept, as OmniMedVQA ranks them
        for option in mc_options(record):
            completion, suffix = _option_completion(processor, prefix, question, option)
            rows.append((index, prefix, completion, suffix))

    losses: list[list[float] | None] = [None] * len(records)
    pad_id = processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else 0
    for batch in _batches(rows, batch_size):
        prompts = prompting.encode(
            processor,
            [loader(records[i]) for i, *_ in batch],
            [p for _, p, _, _ in batch],
            padding_side="right",
        )
        # completions on their own, without BOS, as TRL's prompt-completion collator tokenizes them
        completions = processor.tokenizer([c for _, _, c, _ in batch], add_special_tokens=False)["input_ids"]
        suffixes = processor.tokenizer([s for *_, s in batch], add_special_tokens=False)["input_ids"]
        prompt_lens = prompts["attention_mask"].sum(dim=1).tolist()
        width = max(plen + len(comp) for plen, comp in zip(prompt_lens, completions))
        n_rows = len(batch)
        inputs = dict(prompts)
        input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((n_rows, width), dtype=torch.long)
        for key, value in prompts.items():  # other per-token inputs: the prompt's values, zeros after it
            if key not in ("input_ids", "attention_mask") and value.shape == prompts["input_ids"].shape:
                inputs[key] = torch.zeros((n_rows, width), dtype=value.dtype)
        for row, (plen, comp) in enumerate(zip(prompt_lens, completions)):
            input_ids[row, :plen] = prompts["input_ids"][row, :plen]
            input_ids[row, plen : plen + len(comp)] = torch.tensor(comp, dtype=torch.long)
            attention_mask[row, : plen + len(comp)] = 1
            for key, value in prompts.items():
                if key not in ("input_ids", "attention_mask") and value.shape == prompts["input_ids"].shape:
                    inputs[key][row, :plen] = value[row, :plen]
        inputs["input_ids"], inputs["attention_mask"] = input_ids, attention_mask
        # option token positions: after the prompt and any separator, before the end-of-turn suffix
        spans = []
        for plen, comp, suf in zip(prompt_lens, completions, suffixes):
            spans.append((plen, plen + len(comp) - len(suf)))
        # the token at t is predicted from position t - 1: keep only those positions' logits
        keep = sorted({t - 1 for start, end in spans for t in range(start, end)})
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        with torch.inference_mode():
            logits = model(**inputs, use_cache=False, logits_to_keep=torch.tensor(keep or [0])).logits.float()
        column = {position: i for i, position in enumerate(keep)}
        for row, (start, end) in enumerate(spans):
            if end <= start:  # an empty option: nothing to score
                value = float("inf")
            else:
                picked = logits[row, [column[t - 1] for t in range(start, end)]]
                targets = input_ids[row, start:end].to(picked.device)
                value = torch.nn.functional.cross_entropy(picked, targets).item()
            index = batch[row][0]
            losses[index] = (losses[index] or []) + [value]
    return losses
