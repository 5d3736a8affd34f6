"""Load any image-text-to-text model transformers can load (a folder or a Hub id) and say exactly what was loaded.

``AutoModelForImageTextToText`` + ``AutoProcessor`` pick the classes from the checkpoint's config; our own MedVQA
classes are registered with the Auto classes by importing ``modeling_medvqa``, so MedVQA folders load without
remote code too. Code shipped inside a checkpoint runs only when the caller asks (``trust_remote_code``).

``describe_model`` is the ``model`` entry of report.json: the id, the revision (the commit hash when the
weights come from the Hub cache, read from the snapshot folder they were resolved in), the family and classes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.errors import MedVQAUserError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def looks_local(model: str | Path) -> bool:
    """A path the user meant as a folder (it exists, or is written as a path) rather than a Hub id."""
    text = str(model)
    return Path(text).exists() or text.startswith((".", "/", "~")) or text.count("/") > 1


def check_model_source(
    model: str | Path, *, revision: str | None = None, trust_remote_code: bool = False
) -> None:
    """Fail early, with a user error naming ``model``, when it is neither a model folder nor a loadable Hub id, or
    when its config needs code from the checkpoint that the user did not allow (only the config is read)."""
    from training.file_checks import check_model_folder

    name = str(model)
    if looks_local(model):
        name = str(Path(model).expanduser())
        check_model_folder(name)  # config.json readable, weights in safetensors
    from transformers import AutoConfig

    _import_our_classes()
    try:
        AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as exc:  # no such repo, no network and not in the cache, gated without a token
        raise MedVQAUserError(model, f"cannot load the model ({str(exc).splitlines()[0]})") from None
    except ValueError as exc:  # an unknown model type or code that needs trust_remote_code
        reason = str(exc).splitlines()[0]
        if "trust_remote_code" in str(exc):
            reason = "the checkpoint runs its own code: pass --trust-remote-code if you trust it"
        raise MedVQAUserError(model, reason) from None


def load_vlm(
    model: str | Path,
    *,
    device: str | None = None,
    dtype: str = "auto",
    revision: str | None = None,
    trust_remote_code: bool = False,
    prepare_processor: Callable[[Any], None] | None = None,
    quantize: str | None = None,
):
    """(model in eval mode on ``device``, processor) for a folder or Hub id, through the Auto classes.

    The processor loads first: ``prepare_processor(processor)`` (an adapter, checks of its chat template) runs
    before the weights load, so that what it refuses costs no model load.

    ``dtype``: ``auto`` keeps the checkpoint's dtype. ``quantize`` (``"4bit"`` NF4 / ``"8bit"``): the language
    model's decoder layers through bitsandbytes (:mod:`training.quantization`), the rest in ``dtype`` (``auto``:
    bf16 on a GPU, fp32 on a CPU, also the 4-bit compute dtype). Weights load from safetensors only (``use_safetensors``):
    a checkpoint with only pickled weights is refused rather than unpickled. The tokenizer gets a pad token (its
    EOS) when it has none, because batched generation pads.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _import_our_classes()
    if dtype not in DTYPES:
        raise MedVQAUserError("--dtype", f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
    name = str(Path(model).expanduser()) if looks_local(model) else str(model)
    from transformers.utils import logging as hf_logging

    # transformers' warnings go through Python logging (`medvqa` holds them until the command succeeds, see
    # training/cli.py) and its weight-loading bar stays off: on the error path nothing precedes the one line.
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    model_kwargs: dict[str, Any] = {}
    if quantize:
        from training.quantization import quantization_config

        if dtype == "auto":
            dtype = "bfloat16" if torch.device(device).type == "cuda" else "float32"
        model_kwargs["quantization_config"] = quantization_config(quantize, getattr(torch, dtype))
        # bitsandbytes quantises while loading onto the device; a quantised model cannot be moved afterwards.
        model_kwargs["device_map"] = {"": device}
    try:
        processor = AutoProcessor.from_pretrained(name, **kwargs)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None and tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if prepare_processor is not None:
            prepare_processor(processor)
        net = AutoModelForImageTextToText.from_pretrained(
            name,
            dtype="auto" if dtype == "auto" else getattr(torch, dtype),
            use_safetensors=True,
            **model_kwargs,
            **kwargs,
        )
    except OSError as exc:  # transformers' "missing file" / unreachable Hub id; the first line says which
        raise MedVQAUserError(model, f"cannot load the model ({str(exc).splitlines()[0]})") from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return (net if quantize else net.to(device)).eval(), processor


def _import_our_classes() -> None:
    import modeling_medvqa  # noqa: F401  (registers MedVQA with the Auto classes)


def revision_of(model: str | Path, revision: str | None = None) -> str | None:
    """The commit hash of the loaded checkpoint: the ``snapshots/<hash>`` folder it was resolved in, if any.

    A folder inside the Hub cache gives its own snapshot hash; a Hub id gives the hash of the snapshot its
    config.json resolves to in the local cache (the one ``from_pretrained`` just loaded). A folder of one's own
    has no commit hash: ``None``.
    """
    if looks_local(model):
        path = Path(model).expanduser().resolve()
        parts = path.parts
        for index in range(len(parts) - 1):
            if parts[index] == "snapshots" and _COMMIT.match(parts[index + 1]):
                return parts[index + 1]
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(str(model), "config.json", revision=revision)
    if isinstance(cached, str):
        return revision_of(Path(cached).parent)
    return revision if revision and _COMMIT.match(revision) else None


def describe_model(
    model_id: str | Path,
    model,
    processor,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The ``model`` entry of report.json, minus the prompt and generation settings (evaluate adds them)."""
    local = looks_local(model_id)
    return {
        "id": str(Path(model_id).expanduser().resolve()) if local else str(model_id),
        "source": "folder" if local else "hub",
        "revision": revision_of(model_id, revision),
        "requested_revision": revision,
        "family": getattr(model.config, "model_type", None),
        "model_class": type(model).__name__,
        "processor_class": type(processor).__name__,
        "trust_remote_code": trust_remote_code,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
