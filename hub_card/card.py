"""Write the model card DIR/README.md from the model folder, its eval report and its training recipe.

``build_card`` returns a :class:`huggingface_hub.ModelCard`: YAML metadata through ``ModelCardData`` (license,
library, pipeline tag, both base models, tags and a ``model-index`` holding every accuracy of ``report.json``),
then a body rendered from ``hub_card/template.md``.  The card is meant to go public, so it is built only from the
config, the report (aggregate numbers) and the recipe; strings taken from the config or the recipe are scrubbed of
local absolute paths, and recipe keys that look like DICOM patient fields are dropped.

CLI: ``medvqa card --model DIR --report report.json [--recipe YAML] [--repo-id ID]``.  Without ``--recipe`` the
card uses ``DIR/training_recipe.yaml`` when the folder has one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.errors import MedVQAUserError
from training.file_checks import read_json_object, read_yaml, sniff, why_not

if TYPE_CHECKING:  # huggingface_hub is imported inside functions: `medvqa --help` stays fast
    from huggingface_hub import EvalResult, ModelCard

DEFAULT_VISION_BASE = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
DEFAULT_TEXT_BASE = "meta-llama/Meta-Llama-3-8B-Instruct"
LICENSE = "llama3"  # the merged weights contain Llama 3's, so its license governs them
PAPER_ARXIV = "2504.05575"
TEMPLATE_PATH = Path(__file__).with_name("template.md")
RECIPE_IN_FOLDER = "training_recipe.yaml"
# The last line of every card this command writes: only a README.md ending with it is ever overwritten.
CARD_MARKER = "<!-- written by `medvqa card`; running it again replaces this file -->"
DEFAULT_EVAL_DATASET = "OmniMedVQA (open-ended conversion, held-out test split)"
TASK_TYPE = "visual-question-answering"

# The paper's numbers, shown beside ours with the caveat that the splits differ (DESIGN.md §1).
PAPER_RESULTS = {"overall": 0.734, "yes_no": 0.769, "open": 0.707}

# DESIGN.md §6, one line each, so the card names the rule behind every number.
SCORER_RULES = {
    "normalized_exact": "lower case, punctuation/articles/extra spaces removed, synonyms (modality names, number "
    "words) mapped, then equal",
    "yes_no": "exactly one of yes/no in the normalized prediction, and it equals the answer",
    "contains": "the normalized answer occurs in the normalized prediction as whole words (a substring test)",
    "token_recall": "share of the answer's tokens found in the prediction (LLaVA-Med's recall)",
    "token_f1": "SQuAD-style token F1 between prediction and answer (as in MedGemma's card)",
    "mc_qa_score": "OmniMedVQA's rule: the original option closest to the prediction (difflib ratio) is the answer",
    "mc_prefix_score": "OmniMedVQA's rule: the option with the lowest mean token loss after the question is the answer",
}

# (report key, label) of the groups that go into the model-index, in card order.
_TOP_GROUPS = (("overall", "Overall"), ("yes_no", "Yes/no questions"), ("open", "Open questions"))
_NESTED_GROUPS = (
    ("by_modality", "Modality"),
    ("by_question_type", "Question type"),
    ("by_dataset", "Source dataset"),
    ("templates", "Question template"),
    ("scorers", "Scorer"),
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
# An absolute POSIX path with at least two components (/home/x), a ~ path, or a Windows drive path. The look-behind
# keeps "yes/no", URLs ("https://host/a/b") and relative paths ("data/train.jsonl") intact.
_ABS_PATH = re.compile(r"(?<![\w.:/~-])(?:~|/[\w.+@-]+)(?:/[\w.+@-]*)+|\b[A-Za-z]:\\[^\s|,;'\"]*")
# Keys a recipe must never carry into a public card (DICOM patient/study attributes and the like).
_PATIENT_KEY = re.compile(
    r"patient|physician|accession|institution|birth|operator|studydate|studytime|studyid|seriesdate|seriestime",
    re.IGNORECASE,
)
_LOCAL = "<local path>"
_BASELINE_SOURCES = {"train": "training set (no peeking at test answers)"}


@dataclass(frozen=True)
class Metric:
    """One ``M`` of report.json (DESIGN.md §7): accuracy in [0, 1], number of questions, 95% CI or None.

    ``baseline`` is the slice's ``majority_baseline`` (an extra of medvqa's reports) when the report has it.
    """

    accuracy: float
    n: int | None
    ci95: tuple[float, float] | None
    baseline: float | None = None


def parse_metric(value: Any) -> Metric | None:
    """``M`` -> :class:`Metric`; None when ``value`` is not an ``M`` with a finite numeric accuracy."""
    if not isinstance(value, dict):
        return None
    acc = value.get("accuracy")
    if isinstance(acc, bool) or not isinstance(acc, int | float) or not math.isfinite(acc):
        return None
    n = value.get("n")
    ci = value.get("ci95")
    ci95 = None
    if isinstance(ci, list | tuple) and len(ci) == 2 and all(isinstance(x, int | float) for x in ci):
        ci95 = (ci[0], ci[1])
    baseline = value.get("majority_baseline")
    return Metric(
        accuracy=acc,
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        ci95=ci95,
        baseline=baseline if isinstance(baseline, int | float) and not isinstance(baseline, bool) else None,
    )


def _reportable(m: Metric | None) -> bool:
    # An empty slice (n == 0, e.g. seen/novel templates when eval had no training file) has no accuracy to show.
    return m is not None and m.n != 0


def iter_report_metrics(report: dict) -> list[tuple[str, str | None, Metric]]:
    """Every metric of a report as ``(group, key, Metric)``: key is None for overall/yes_no/open.

    Groups: overall, yes_no, open, by_modality, by_question_type, by_dataset, templates, scorers; slices with
    ``n == 0`` are left out (they have no accuracy).
    """
    out: list[tuple[str, str | None, Metric]] = []
    for group, _ in _TOP_GROUPS:
        m = parse_metric(report.get(group))
        if _reportable(m):
            out.append((group, None, m))
    for group, _ in _NESTED_GROUPS:
        entries = report.get(group)
        if not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            m = parse_metric(value)
            if _reportable(m):
                out.append((group, str(key), m))
    return out


def _n(m: Metric) -> str:
    return str(m.n) if m.n is not None else "—"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _ci(m: Metric) -> str:
    return f"{100 * m.ci95[0]:.1f}–{100 * m.ci95[1]:.1f}" if m.ci95 else "—"


def _primary(report: dict) -> tuple[str, str]:
    primary = report.get("primary") if isinstance(report.get("primary"), dict) else {}
    return str(primary.get("yes_no", "yes_no")), str(primary.get("open", "normalized_exact"))


def _scorer_of(report: dict, group: str, key: str | None) -> str:
    """Which scoring rule produced a metric: its own for yes/no, open and scorers, else the primary pair."""
    yes_no, open_ = _primary(report)
    if group == "yes_no":
        return yes_no
    if group == "open":
        return open_
    if group == "scorers" and key is not None:
        return key
    return f"{yes_no}+{open_}"


def scrub(text: str) -> str:
    """Replace local absolute paths in ``text`` by ``<local path>`` (a public card must not leak them)."""
    return _ABS_PATH.sub(_LOCAL, text)


def local_paths(text: str) -> list[str]:
    """The local absolute paths ``text`` mentions (what :func:`scrub` would replace)."""
    return _ABS_PATH.findall(text)


def _cell(text: Any) -> str:
    return scrub(str(text)).replace("|", "\\|").replace("\n", " ").strip()


def report_eval_results(
    report: dict,
    *,
    dataset_name: str = DEFAULT_EVAL_DATASET,
    dataset_type: str | None = None,
    split: str = "test",
) -> list[EvalResult]:
    """The model-index entries of a report: one ``accuracy`` EvalResult per metric of :func:`iter_report_metrics`.

    ``metric_value`` is the report's accuracy unchanged (a fraction in [0, 1]); ``metric_args`` carries ``group``,
    ``key``, ``n`` and ``ci95`` so that a reader can map every entry back to report.json, and ``metric_name``
    repeats n and the CI for people.  ``metric_config`` names the scoring rule.
    """
    from huggingface_hub import EvalResult

    labels = dict(_TOP_GROUPS) | dict(_NESTED_GROUPS)
    dataset_type = dataset_type or _slug(dataset_name)
    results = []
    for group, key, m in iter_report_metrics(report):
        label = labels[group] if key is None else f"{labels[group]}: {scrub(key)}"
        ci = f", 95% CI {_ci(m)}" if m.ci95 else ""
        args: dict[str, Any] = {"group": group, "key": key, "n": m.n}
        if m.ci95:
            args["ci95"] = [m.ci95[0], m.ci95[1]]
        results.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name="Medical visual question answering (open-ended)",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split=split,
                metric_type="accuracy",
                metric_value=m.accuracy,
                metric_name=f"{label} accuracy (n={_n(m)}{ci})",
                metric_config=_scorer_of(report, group, key),
                metric_args={k: v for k, v in args.items() if v is not None},
            )
        )
    return results


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "eval"


# ----------------------------------------------------------------------------------------------- folder facts


def _read_json(path: Path) -> dict:
    return read_json_object(path, path.name)


def _hub_id(value: Any) -> str | None:
    """A Hub repo id from a config value (``hf-hub:`` prefix allowed), or None for local paths and the like."""
    if not isinstance(value, str):
        return None
    value = value.strip().removeprefix("hf-hub:")
    return value if _HUB_ID.match(value) else None


def base_models(config: dict | None, adapter_config: dict | None = None) -> list[str]:
    """The Hub ids the weights derive from: the adapter's base for adapter-only folders, else vision + text bases.

    Read from the config where it names them (``base_models`` as written by ``medvqa init``,
    ``vision_config._name_or_path``, ``text_config._name_or_path`` ...); a missing or local value falls back to
    BiomedCLIP / Llama-3-8B-Instruct.
    """
    if adapter_config is not None:
        base = _hub_id(adapter_config.get("base_model_name_or_path"))
        if base:
            return [base]
    config = config or {}
    listed = config.get("base_models")
    if isinstance(listed, list):
        ids = [i for i in map(_hub_id, listed) if i]
        if ids:
            return list(dict.fromkeys(ids))
    named = listed if isinstance(listed, dict) else {}  # medvqa init writes {"vision": ..., "text": ...}
    vision_cfg = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    vision_candidates = (
        named.get("vision"),
        config.get("vision_model_id"),
        config.get("vision_name_or_path"),
        vision_cfg.get("pretrained"),
        vision_cfg.get("_name_or_path"),
    )
    text_candidates = (
        named.get("text"),
        config.get("text_model_id"),
        config.get("text_name_or_path"),
        text_cfg.get("_name_or_path"),
    )
    vision = next((i for i in map(_hub_id, vision_candidates) if i), DEFAULT_VISION_BASE)
    text = next((i for i in map(_hub_id, text_candidates) if i), DEFAULT_TEXT_BASE)
    return list(dict.fromkeys([vision, text]))


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.glob("*.safetensors") if p.is_file() and not p.is_symlink())


def _safetensors_parameters(files: list[Path]) -> tuple[int, list[str]] | None:
    """Parameter count and dtypes from safetensors headers alone (8-byte length + JSON), without loading tensors."""
    total, dtypes = 0, set()
    for path in files:
        try:
            with path.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > 100 * 2**20:  # a real header is far smaller: treat as malformed
                    return None
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for name, info in header.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            total += math.prod(info.get("shape", []))
            dtypes.add(str(info.get("dtype")))
    return total, sorted(dtypes)


def _human_count(n: int) -> str:
    if n >= 10**9:
        return f"{n / 10**9:.2f} B"
    if n >= 10**6:
        return f"{n / 10**6:.1f} M"
    return f"{n:,}"


# --------------------------------------------------------------------------------------------- card sections


def _architecture(config: dict, model_dir: Path, adapter_config: dict | None, adapter_only: bool) -> str:
    vision_cfg = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    text_cfg = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    trunk = vision_cfg.get("timm_model_name") or config.get("vision_model_name") or "vit_base_patch16_224"
    size = vision_cfg.get("image_size") or config.get("image_size") or 224
    tokens = config.get("image_seq_length")
    lines = [
        "```",
        f"image --BiomedCLIP ViT ({_cell(trunk)}, {_cell(size)} px)--> patch tokens"
        + (f" ({_cell(tokens)} image tokens)" if tokens else ""),
        "      --projector (Linear -> GELU -> Linear)--> image embeddings",
        "text  --Llama-3 chat template, image placeholder expanded--> embeddings (image tokens replaced)",
        "      --Llama-3 decoder (+ LoRA)--> lm_head --> answer",
        "```",
        "",
    ]
    facts = []
    if text_cfg.get("hidden_size") and text_cfg.get("num_hidden_layers"):
        facts.append(
            f"Language model shapes: hidden size {_cell(text_cfg['hidden_size'])}, "
            f"{_cell(text_cfg['num_hidden_layers'])} layers"
        )
    if "vision_feature_layer" in config:
        facts.append(
            f"Vision features from ViT block {_cell(config['vision_feature_layer'])} (CLS token dropped)"
        )
    stats = _safetensors_parameters(_weight_files(model_dir))
    if stats and stats[0]:
        what = "adapter parameters" if adapter_only else "parameters"
        facts.append(f"{_human_count(stats[0])} {what} in safetensors ({', '.join(stats[1])})")
    if adapter_config is not None:
        r, alpha = adapter_config.get("r"), adapter_config.get("lora_alpha")
        targets = adapter_config.get("target_modules")
        if isinstance(targets, list):
            targets = ", ".join(map(str, targets))
        facts.append(f"LoRA adapter: r={_cell(r)}, alpha={_cell(alpha)}, target modules: {_cell(targets)}")
    facts.append(
        "Remote code (`trust_remote_code=True`): configuration, modeling and processing files travel with the "
        "weights and need only torch, transformers and timm"
    )
    return "\n".join(lines + [f"- {f}" for f in facts])


def _usage(model_id: str, adapter_only: bool, adapter_base: str | None) -> str:
    load = [
        "import torch",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
    ]
    if adapter_only:
        base = adapter_base or "<base model: the Hub id of the medvqa checkpoint this adapter was trained on>"
        load += [
            "from peft import PeftModel",
            "",
            f'base_id = "{base}"',
            f'adapter_id = "{model_id}"',
            "processor = AutoProcessor.from_pretrained(base_id, trust_remote_code=True)",
            "model = AutoModelForImageTextToText.from_pretrained(",
            '    base_id, trust_remote_code=True, dtype=torch.bfloat16, device_map="auto"',
            ")",
            "model = PeftModel.from_pretrained(model, adapter_id)",
        ]
    else:
        load += [
            "",
            f'model_id = "{model_id}"',
            "processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)",
            "model = AutoModelForImageTextToText.from_pretrained(",
            '    model_id, trust_remote_code=True, dtype=torch.bfloat16, device_map="auto"',
            ")",
        ]
    load += [
        "",
        'image = Image.open("chest_xray.png").convert("RGB")',
        "messages = [",
        '    {"role": "user", "content": [',
        '        {"type": "image"},',
        '        {"type": "text", "text": "Which imaging modality is used in this image?"},',
        "    ]},",
        "]",
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(images=[image], text=[prompt], return_tensors="pt").to(model.device, dtype=model.dtype)',
        "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)",
        'answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)',
        "print(answer)",
    ]
    text = ["```python", *load, "```", ""]
    if adapter_only:
        text.append(
            "This repository holds a **LoRA adapter only**; it needs its base model"
            + (f" [`{adapter_base}`](https://huggingface.co/{adapter_base})." if adapter_base else ".")
        )
    text.append(
        "Needs `transformers>=5`, `timm` and `torch` (and `accelerate` for `device_map`). The model answers in "
        "short phrases, as it was trained to. DICOM and NIfTI images need windowing to RGB first: "
        "`medvqa ask --model MODEL --image scan.dcm --question ...` from the medvqa-lite repository does it."
    )
    return "\n".join(text)


def _table(label: str, rows: list[tuple[str, Metric, float | None]], extra: str | None = None) -> str:
    """A markdown table; the majority-baseline column appears only if some row has a baseline."""
    with_baseline = any(b is not None for _, _, b in rows)
    head = f"| {label} | n | accuracy | 95% CI |" + (" majority baseline |" if with_baseline else "")
    sep = "|---|---:|---:|---:|" + ("---:|" if with_baseline else "")
    lines = [head, sep]
    for name, m, b in rows:
        line = f"| {_cell(name)} | {_n(m)} | {_pct(m.accuracy)} | {_ci(m)} |"
        if with_baseline:
            line += f" {_pct(b) if b is not None else '—'} |"
        lines.append(line)
    if extra:
        lines += ["", extra]
    return "\n".join(lines)


def _results(report: dict, eval_dataset: str, charts: list[str], files: set[str]) -> str:
    yes_no, open_ = _primary(report)
    baselines = report.get("baselines") if isinstance(report.get("baselines"), dict) else {}
    majority = baselines.get("majority_answer") if isinstance(baselines.get("majority_answer"), dict) else {}

    def baseline(group: str, key: str | None, m: Metric) -> float | None:
        """The majority-answer baseline of a slice: the slice's own figure, else one under baselines."""
        if m.baseline is not None:
            return m.baseline
        nested = majority if group == "overall" else majority.get(group)
        if key is not None:
            nested = nested.get(key) if isinstance(nested, dict) else None
        b = parse_metric(nested)
        return b.accuracy if b else None

    parts = [
        f"Evaluated on **{_cell(eval_dataset)}**"
        + (f", {report['n']} questions" if isinstance(report.get("n"), int) else "")
        + ". Accuracy with a 95% confidence interval; scoring rules: "
        f"`{yes_no}` for yes/no questions, `{open_}` for open questions (rules below). "
        + (f"Intervals: {_cell(report['ci_method'])}. " if isinstance(report.get("ci_method"), str) else "")
        + "The majority baseline answers every question with the most frequent answer of its type (yes/no or "
        "open)"
        + (
            f", taken from the {_BASELINE_SOURCES.get(report['baseline_source'], _cell(report['baseline_source']))}."
            if isinstance(report.get("baseline_source"), str)
            else "."
        ),
        "",
    ]
    top = []
    for group, label in _TOP_GROUPS:
        m = parse_metric(report.get(group))
        if _reportable(m):
            top.append((label, m, baseline(group, None, m)))
    other_baselines = [
        (f"baseline: {name.replace('_', ' ')}", m, None)
        for name, value in baselines.items()
        if name != "majority_answer" and _reportable(m := parse_metric(value))
    ]
    parts.append(_table("", top + other_baselines))
    paper = ", ".join(f"{label.lower()} {_pct(PAPER_RESULTS[g])}" for g, label in _TOP_GROUPS)
    parts += [
        "",
        f"For reference, the paper reports {paper} on its own open-ended conversion of OmniMedVQA; there is no "
        "official split, so the numbers are not directly comparable.",
    ]
    for group, label, heading in (
        ("by_modality", "Modality", "By modality"),
        ("by_question_type", "Question type", "By question type"),
        ("by_dataset", "Source dataset", "By source dataset"),
        ("templates", "Question template", "Seen vs. novel question templates"),
    ):
        entries = report.get(group)
        if not isinstance(entries, dict):
            continue
        rows = [
            (str(k), m, baseline(group, str(k), m))
            for k, v in entries.items()
            if _reportable(m := parse_metric(v))
        ]
        if not rows:
            continue
        rows.sort(key=lambda r: (-(r[1].n or 0), r[0]))
        extra = None
        if group == "templates":
            extra = (
                "*Novel* questions use phrasings that never occur in training; a large gap to *seen* means the "
                "model leans on the question template."
            )
        parts += ["", f"### {heading}", "", _table(label, rows, extra)]

    scorers = report.get("scorers") if isinstance(report.get("scorers"), dict) else {}
    rules = report.get("rules") if isinstance(report.get("rules"), dict) else {}
    names = list(dict.fromkeys([yes_no, open_, *map(str, scorers)]))
    parts += [
        "",
        "### Scoring rules",
        "",
        "Each rule over the questions it applies to; only the primary rules make the numbers above.",
        "",
        "| rule | used for | n | accuracy | 95% CI | mean score | definition |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name in names:
        raw = scorers.get(name)
        m = parse_metric(raw)
        use = "yes/no (primary)" if name == yes_no else "open (primary)" if name == open_ else "also reported"
        if _reportable(m):
            acc = (_n(m), _pct(m.accuracy), _ci(m))
        else:
            acc = ("0" if m else "—", "—", "—")  # a rule that applied to no question, e.g. options missing
        mean = raw.get("mean") if isinstance(raw, dict) else None
        mean_text = f"{mean:.3f}" if isinstance(mean, int | float) and not isinstance(mean, bool) else "—"
        rule = rules.get(name) if isinstance(rules.get(name), str) else SCORER_RULES.get(name, "")
        parts.append(
            f"| `{_cell(name)}` | {use} | {acc[0]} | {acc[1]} | {acc[2]} | {mean_text} | {_cell(rule)} |"
        )

    warnings = report.get("warnings") if isinstance(report.get("warnings"), list) else []
    if warnings:
        parts += ["", "**Warnings from the evaluation:**", ""]
        parts += [f"- {_cell(w)}" for w in warnings if isinstance(w, str)]

    diag = report.get("diagnostics") if isinstance(report.get("diagnostics"), dict) else {}
    facts = []
    if isinstance(diag.get("distinct_predictions"), int):
        facts.append(f"{diag['distinct_predictions']} distinct predictions")
    if isinstance(diag.get("top_prediction_share"), int | float):
        facts.append(f"the most frequent prediction is {_pct(diag['top_prediction_share'])} of all answers")
    if isinstance(diag.get("answer_entropy_bits"), int | float):
        facts.append(f"answer entropy {diag['answer_entropy_bits']:.2f} bits")
    if facts or "mode_collapse" in diag:
        collapse = (
            " **Mode collapse was flagged**: the model gives the same few answers."
            if diag.get("mode_collapse")
            else ""
        )
        parts += ["", "### Diagnostics", "", "Answer diversity: " + "; ".join(facts) + "." + collapse]
    throughput = report.get("throughput") if isinstance(report.get("throughput"), dict) else {}
    if isinstance(throughput.get("questions_per_s"), int | float):
        parts += [
            "",
            f"Throughput during evaluation: {throughput['questions_per_s']:.2f} questions/s"
            + (f" at batch size {throughput['batch_size']}." if throughput.get("batch_size") else "."),
        ]

    if charts:
        parts += ["", "### Charts", ""]
        parts += [f"![{Path(c).stem.replace('_', ' ')}]({urllib.parse.quote(c)})" for c in charts]
    links = [f"[{f}]({f})" for f in ("report.md", "report.json") if f in files]
    if links:
        parts += ["", "Full report: " + ", ".join(links) + "."]
    return "\n".join(parts)


def _fmt_value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_fmt_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt_value(v)}" for k, v in value.items() if not _PATIENT_KEY.search(str(k)))
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "—"
    return _cell(value)


def _bullets(mapping: dict) -> list[str]:
    return [f"- `{_cell(k)}`: {_fmt_value(v)}" for k, v in mapping.items() if not _PATIENT_KEY.search(str(k))]


def _training(recipe: dict | None) -> str:
    """The recipe, printed generically: whatever keys it has, stages as a table, the rest as bullets."""
    if not recipe:
        return (
            "No training recipe was given with this folder. The paper's setup: BiomedCLIP-to-Llama alignment, then "
            "LoRA (r=8, alpha=32) and joint fine-tuning; bf16, global batch 128, AdamW, cosine schedule, 100 warm-up "
            "steps, 2x A100 40GB with DeepSpeed ZeRO-2."
        )
    parts: list[str] = []
    stages = recipe.get("stages")
    if isinstance(stages, list):  # a list of {name: ..., ...} is accepted too
        stages = {str(s.get("name", i)) if isinstance(s, dict) else str(i): s for i, s in enumerate(stages)}
    if isinstance(stages, dict) and stages:
        parts += ["Stages, in order:", "", "| stage | settings |", "|---|---|"]
        for name, settings in stages.items():
            if _PATIENT_KEY.search(str(name)):
                continue
            text = _fmt_value(settings) if isinstance(settings, dict | list) else _cell(settings)
            parts.append(f"| `{_cell(name)}` | {text or '—'} |")
        parts.append("")
    titles = {"model": "Model", "training": "Hyper-parameters", "lora": "LoRA", "data": "Data"}
    scalars = {}
    for key, value in recipe.items():
        if key in ("stages", "hardware") or _PATIENT_KEY.search(str(key)):
            continue
        if isinstance(value, dict):
            parts += [f"**{titles.get(key, _cell(key))}**", "", *_bullets(value), ""]
        else:
            scalars[key] = value
    if scalars:
        parts += ["**Other settings**", "", *_bullets(scalars), ""]
    training = recipe.get("training") if isinstance(recipe.get("training"), dict) else {}
    factors = [
        training.get(k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps", "num_gpus")
    ]
    if all(isinstance(f, int) and not isinstance(f, bool) for f in factors):
        parts += [
            f"Global batch: {factors[0]} per device x {factors[1]} accumulation x {factors[2]} GPUs = "
            f"{math.prod(factors)}.",
            "",
        ]
    hardware = recipe.get("hardware")
    if hardware:
        parts.append(f"**Hardware**: {_fmt_value(hardware)}")
    return "\n".join(parts).strip()


def _limitation_notes(report: dict) -> str:
    notes = []
    diag = report.get("diagnostics") if isinstance(report.get("diagnostics"), dict) else {}
    if diag.get("mode_collapse"):
        notes.append(
            "- **Mode collapse in this evaluation.** The answers concentrate on a few strings; treat the "
            "accuracies above with care."
        )
    templates = report.get("templates") if isinstance(report.get("templates"), dict) else {}
    seen, novel = parse_metric(templates.get("seen")), parse_metric(templates.get("novel"))
    if seen and novel and seen.accuracy - novel.accuracy > 0.05:
        notes.append(
            f"- **Template dependence measured here**: {_pct(seen.accuracy)} on seen templates vs. "
            f"{_pct(novel.accuracy)} on novel phrasings."
        )
    return "\n".join(notes) + ("\n" if notes else "")


# ----------------------------------------------------------------------------------------------- entry points


def build_card(
    model_dir: str | Path,
    report: dict,
    recipe: dict | None = None,
    *,
    repo_id: str | None = None,
    eval_dataset: str | None = None,
) -> ModelCard:
    """The model card of ``model_dir`` from its eval ``report`` (DESIGN.md §7) and training ``recipe``.

    Args:
        model_dir: the model folder (config.json, or adapter_config.json for an adapter-only folder).
        report: report.json as a dict; every metric goes into the card's ``model-index``.
        recipe: the training recipe mapping, or None (the card then describes the paper's setup).
        repo_id: the Hub id the card will live under, used in the loading snippet (a placeholder otherwise).
        eval_dataset: name of the evaluation set (default: the report's ``dataset``, else OmniMedVQA test split).

    Raises:
        MedVQAUserError: the folder has no config, or the report has no overall accuracy.
    """
    from huggingface_hub import ModelCard, ModelCardData

    model_dir = Path(model_dir)
    if not isinstance(report, dict) or parse_metric(report.get("overall")) is None:
        raise MedVQAUserError(
            "report.json", "no 'overall' metric with an accuracy (expected DESIGN.md §7 keys)"
        )
    config_path, adapter_path = model_dir / "config.json", model_dir / "adapter_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    adapter_config = _read_json(adapter_path) if adapter_path.is_file() else None
    if not config and adapter_config is None:
        raise MedVQAUserError(model_dir, "no config.json or adapter_config.json: not a model folder")
    has_full_weights = any(p.name.startswith("model") for p in _weight_files(model_dir))
    adapter_only = adapter_config is not None and not has_full_weights
    adapter_base = _hub_id(adapter_config.get("base_model_name_or_path")) if adapter_config else None

    # Regular files only (a symlink could point anywhere); a chart must be a PNG by content, not only by name:
    # a DICOM renamed scan.png is never embedded.
    files = {p.name for p in model_dir.iterdir() if p.is_file() and not p.is_symlink()}
    charts = sorted(f for f in files if f.lower().endswith(".png") and sniff(model_dir / f) == "png")
    if eval_dataset is None:
        eval_dataset = (
            report.get("dataset") if isinstance(report.get("dataset"), str) else DEFAULT_EVAL_DATASET
        )
    eval_dataset = scrub(eval_dataset)
    model_name = (repo_id.split("/")[-1] if repo_id else model_dir.resolve().name) or "medvqa-lite"
    datasets = [
        d
        for d in (
            _hub_id(x) for x in _listed(report.get("datasets")) + _listed((recipe or {}).get("datasets"))
        )
        if d
    ]

    tags = [
        "medical",
        "vision-language",
        "visual-question-answering",
        "biomedclip",
        "llama-3",
        "medvqa",
        "custom_code",
    ]
    if adapter_config is not None:
        tags += ["lora", "peft"]
    card_data = ModelCardData(
        language="en",
        license=LICENSE,
        # An adapter-only repo is loaded through peft (PeftModel on top of its base), which the Hub shows by this tag.
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag="image-text-to-text",
        base_model=base_models(config, adapter_config if adapter_only else None),
        datasets=list(dict.fromkeys(datasets)) or None,
        metrics=["accuracy"],
        tags=tags,
        model_name=model_name,
        eval_results=report_eval_results(report, dataset_name=eval_dataset),
    )
    kind = "LoRA adapter for a" if adapter_only else "A"
    intro = (
        f"{kind} lightweight medical visual question answering model: a BiomedCLIP ViT-B/16 image encoder, an MLP "
        "projector and Llama-3-8B-Instruct, trained to answer open-ended and yes/no questions about medical images "
        "(CT, MRI, X-ray, ultrasound, microscopy, fundus, OCT, dermoscopy and more). It reproduces "
        f"[A Lightweight Large Vision-language Model for Multimodal Medical Images](https://arxiv.org/abs/{PAPER_ARXIV})"
        " with Hugging Face tooling (medvqa-lite).\n\n"
        f"**Overall accuracy {_pct(parse_metric(report['overall']).accuracy)}** on {eval_dataset}. "
        "Research use only, not for clinical use. Built with Meta Llama 3."
    )
    model_id = repo_id or "path/to/this-folder-or-hub-id"
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        title=_cell(model_name),
        intro=intro,
        architecture=_architecture(config, model_dir, adapter_config, adapter_only),
        usage=_usage(model_id, adapter_only, adapter_base if adapter_only else None),
        results=_results(report, eval_dataset, charts, files),
        training=_training(recipe),
        limitation_notes=_limitation_notes(report),
    )
    # Last guard: nothing of this machine's paths in the body, whatever a config or recipe string held.
    body = card.text
    for local in {str(model_dir.resolve()), str(model_dir.resolve().parent)}:
        if len(local) > 1:
            body = body.replace(local, _LOCAL)
    card.text = scrub(body)
    return card


def _listed(value: Any) -> list:
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, list) else []


def load_recipe(path: str | Path) -> dict:
    """A YAML recipe as a dict (MedVQAUserError when unreadable or not a mapping)."""
    path = Path(path)
    data = read_yaml(path, "recipe")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedVQAUserError(path, "a recipe must be a YAML mapping")
    return data


def write_card(
    model_dir: str | Path,
    report_path: str | Path,
    recipe_path: str | Path | None = None,
    *,
    repo_id: str | None = None,
    eval_dataset: str | None = None,
) -> Path:
    """Build the card from files on disk and write ``model_dir/README.md``; returns its path.

    Without ``recipe_path`` the folder's own ``training_recipe.yaml`` is used when present.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise MedVQAUserError(model_dir, f"model folder: {why_not(model_dir, 'folder')}")
    report_path = Path(report_path)
    if not report_path.is_file():
        raise MedVQAUserError(
            report_path, f"report: {why_not(report_path)} (medvqa eval or medvqa score writes report.json)"
        )
    report = _read_json(report_path)
    if recipe_path is None and (model_dir / RECIPE_IN_FOLDER).is_file():
        recipe_path = model_dir / RECIPE_IN_FOLDER
    recipe = None
    if recipe_path is not None:
        if not Path(recipe_path).is_file():
            raise MedVQAUserError(recipe_path, f"recipe: {why_not(recipe_path)}")
        recipe = load_recipe(recipe_path)
    out = model_dir / "README.md"
    check_readme_writable(out)  # before building: a refusal must not cost the card's work
    card = build_card(model_dir, report, recipe, repo_id=repo_id, eval_dataset=eval_dataset)
    text = card.content.rstrip("\n") + "\n\n" + CARD_MARKER + "\n"
    # Written beside and renamed over: a crash never leaves half a README, and a symlink is replaced, not followed.
    tmp = out.with_name(f".README.md.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MedVQAUserError(out, f"cannot write the card ({exc.strerror or exc})") from None
    return out


def check_readme_writable(readme: Path) -> None:
    """Refuse to overwrite a README.md that ``medvqa card`` did not write (DESIGN.md §9: never destroy user files).

    Accepted: no README.md, or one that ends with :data:`CARD_MARKER` (an earlier card, regenerated).
    """
    if readme.is_symlink():
        raise MedVQAUserError(readme, "is a symbolic link; medvqa card writes only a real README.md")
    if not readme.exists():
        return
    if not readme.is_file():
        raise MedVQAUserError(readme, "exists and is not a regular file")
    try:
        with readme.open("rb") as fh:
            fh.seek(max(0, readme.stat().st_size - 4096))
            tail = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        raise MedVQAUserError(readme, f"cannot read it ({exc.strerror or exc})") from None
    if CARD_MARKER not in tail:
        raise MedVQAUserError(
            readme,
            "exists and was not written by medvqa card; move it away (or delete it) to write the card",
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvqa card``."""
    parser.add_argument(
        "--model", required=True, metavar="DIR", help="the model folder; the card goes to DIR/README.md"
    )
    parser.add_argument(
        "--report", required=True, metavar="JSON", help="report.json written by medvqa eval/score"
    )
    parser.add_argument(
        "--recipe", metavar="YAML", help=f"training recipe (default: DIR/{RECIPE_IN_FOLDER} when present)"
    )
    parser.add_argument(
        "--repo-id", metavar="ID", help="Hub id used in the loading snippet (e.g. org/medvqa-lite)"
    )
    parser.add_argument("--eval-dataset", metavar="NAME", help="name of the evaluation set shown in the card")


def run(args: argparse.Namespace) -> int:
    """``medvqa card``: write DIR/README.md and say where."""
    out = write_card(
        args.model, args.report, args.recipe, repo_id=args.repo_id, eval_dataset=args.eval_dataset
    )
    print(f"wrote {out}")
    return 0
