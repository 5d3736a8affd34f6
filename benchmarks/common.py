"""Timing, machine description and the matmul peak every ratio and MFU in the report refers to."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def quiet_libraries() -> None:
    """Offline, no tokenizer threads, no library warnings or progress bars: a benchmark prints only its table."""
    import warnings

    # Before transformers is imported: huggingface_hub reads HF_HUB_OFFLINE once, at import.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    """Seconds one call of ``fn`` takes (CUDA work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, device: str = "cpu", raw: bool = False
) -> dict[str, float] | tuple[dict[str, float], dict[str, list[float]]]:
    """Median seconds per call of each function, run in alternating order so that drift hits all of them alike.

    With ``raw``, also the per-repeat times (adjacent calls of a repeat make a pair, for paired ratios).
    """
    for fn in fns.values():
        for _ in range(warmup):
            timed(fn, device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(fns[name], device))
    medians = {name: statistics.median(values) for name, values in times.items()}
    return (medians, times) if raw else medians


def paired_ratio_iqr(reference: list[float], ours: list[float]) -> list[float]:
    """25th and 75th percentile of reference/ours over repeats: how much the ratio moved on a shared machine."""
    ratios = sorted(r / o for r, o in zip(reference, ours))
    if len(ratios) < 2:
        return [ratios[0], ratios[0]]
    q = statistics.quantiles(ratios, n=4, method="inclusive")
    return [q[0], q[2]]


def matmul_peak_flops(device: str, dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of a large square matmul, the best of ``repeats``: the reference for MFU in this run."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    timed(lambda: a @ b, device)
    best = min(timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * n**3 / best


def machine() -> dict[str, Any]:
    """Where the figures were measured."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": None,
    }
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * size / 1024**3, 1)
    except (ValueError, OSError):
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name}, {props.total_memory / 1024**3:.0f} GiB"
    return info


def versions() -> dict[str, str]:
    """Versions of the libraries whose code is measured."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "timm",
        "open_clip_torch",
        "pillow",
        "pydicom",
        "accelerate",
    ):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "absent"
    return out
