"""Shared fixtures. No test touches the network: the Hub is switched off before anything imports it."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "TORCH_EXTENSIONS_DIR", os.path.join(os.path.dirname(__file__), "..", ".cache", "torch_extensions")
)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MedVQA checkpoint assembled by ``medvqa init`` from tiny local BiomedCLIP and Llama-3 stand-ins."""
    from training.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_bases(tiny_model_dir: Path) -> dict[str, str]:
    """The open_clip id and Llama folder the tiny checkpoint was built from."""
    work = tiny_model_dir.parent / f"{tiny_model_dir.name}-bases"
    return {"vision": f"local-dir:{work / 'tiny-biomedclip'}", "text": str(work / "tiny-llama3")}
