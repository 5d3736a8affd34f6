"""`medvqa push`: allow-list, private by default, dry run, adapter-only folders, failures; the Hub is a test double."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

import hub_card.push as push_mod
from hub_card.push import PushFailed, plan_push, push_folder
from training.cli import main
from training.errors import MedVQAUserError

ALLOWED = {
    "config.json",
    "generation_config.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.safetensors.index.json",
    "configuration_medvqa.py",
    "modeling_medvqa.py",
    "processing_medvqa.py",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
    "report.json",
    "report.md",
    "accuracy_by_modality.png",
    "training_recipe.yaml",
}
REFUSED = {
    "optimizer.pt",
    "training_args.bin",
    "scored.jsonl",
    "predictions.jsonl",
    "scan.dcm",
    "brain.nii.gz",
    "labels.pkl",
    "train.py",
    "notes.txt",
    "checkpoint-200/",
}


class FakeHfApi:
    """Records the HfApi calls push_folder makes; ``fail_after`` makes create_commit break mid-upload."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded: list[str] = []
        self.fail_after = fail_after

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, **kwargs: Any) -> None:
        self.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

    def create_commit(self, repo_id: str, operations: list, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
        for i, op in enumerate(operations):
            if self.fail_after is not None and i == self.fail_after:
                raise ConnectionError("Connection reset by peer\nsecond line of detail")
            Path(op.path_or_fileobj).read_bytes()  # "upload" it: the file must exist and be readable
            self.uploaded.append(op.path_in_repo)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc")


def _write_shards(d: Path) -> None:
    save_file({"a": np.ones((4, 4), np.float32)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"b": np.ones(4, np.float32)}, str(d / "model-00002-of-00002.safetensors"))
    index = {
        "metadata": {"total_size": 80},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


def make_full_folder(root: Path) -> Path:
    """A sharded model folder with every allowed kind of file and a heap of things that must stay home."""
    d = root / "model"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps(
            {
                "model_type": "medvqa",
                "auto_map": {
                    "AutoConfig": "configuration_medvqa.MedVQAConfig",
                    "AutoModelForImageTextToText": "modeling_medvqa.MedVQAForConditionalGeneration",
                },
            }
        )
    )
    (d / "processor_config.json").write_text(
        json.dumps({"auto_map": {"AutoProcessor": "processing_medvqa.P"}})
    )
    (d / "configuration_medvqa.py").write_text("C = 1\n")
    (d / "modeling_medvqa.py").write_text("from .configuration_medvqa import C\n")
    (d / "processing_medvqa.py").write_text("P = 1\n")
    _write_shards(d)
    for name in (
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        (d / name).write_text("{}")
    (d / "chat_template.jinja").write_text("{{ messages }}")
    (d / "README.md").write_text("---\nlicense: llama3\n---\n# card\n")
    (d / "report.json").write_text("{}")
    (d / "report.md").write_text("# report\n")
    (d / "accuracy_by_modality.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (d / "training_recipe.yaml").write_text("name: x\n")
    # what must not go up
    for name in ("optimizer.pt", "training_args.bin", "labels.pkl", "scan.dcm", "brain.nii.gz"):
        (d / name).write_bytes(b"\x80\x04junk")
    (d / "scored.jsonl").write_text('{"question": "q"}\n')
    (d / "predictions.jsonl").write_text('{"question": "q"}\n')
    (d / "train.py").write_text("print('train')\n")
    (d / "notes.txt").write_text("notes\n")
    (d / "checkpoint-200").mkdir()
    (d / "checkpoint-200" / "model.safetensors").write_bytes(b"x")
    (d / "checkpoint-200" / "optimizer.pt").write_bytes(b"x")
    return d


def make_adapter_folder(root: Path, base: str = "org/medvqa-init") -> Path:
    d = root / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": base, "r": 8, "peft_type": "LORA"})
    )
    save_file({"lora_A": np.zeros((8, 4), np.float32)}, str(d / "adapter_model.safetensors"))
    (d / "README.md").write_text("# adapter\n")
    (d / "optimizer.pt").write_bytes(b"x")
    return d


def tree_hash(root: Path) -> str:
    """Names, contents and modes of everything under root: equal before and after means untouched."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        h.update(str(p.stat().st_mode).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(autouse=True)
def _no_real_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets to inject a double must fail, not reach for the network."""

    def refuse() -> None:
        raise AssertionError("a real HfApi was requested")

    monkeypatch.setattr(push_mod, "_default_api", refuse)


def test_allow_list_and_private_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_full_folder(tmp_path)
    api = FakeHfApi()
    uploaded = push_folder(d, "org/medvqa", api=api)
    assert set(uploaded) == ALLOWED
    assert sorted(api.uploaded) == sorted(ALLOWED)
    name, kwargs = api.calls[0]
    assert name == "create_repo" and kwargs["private"] is True and kwargs["exist_ok"] is True
    assert [c[0] for c in api.calls] == ["create_repo", "create_commit"]  # one commit, no branch on main
    out = capsys.readouterr().out
    for refused in REFUSED:
        assert refused in out.split("left out")[1], refused  # each left-out file is listed with its reason
    assert "DICOM" in out and "pickle" in out and "training checkpoint folder" in out


def test_public_and_revision(tmp_path: Path) -> None:
    d = make_full_folder(tmp_path)
    api = FakeHfApi()
    push_folder(d, "org/medvqa", public=True, revision="v1", api=api)
    calls = dict(api.calls)
    assert calls["create_repo"]["private"] is False
    assert calls["create_branch"]["branch"] == "v1"
    assert calls["create_commit"]["revision"] == "v1"


def test_dry_run_makes_no_call(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_full_folder(tmp_path)
    api = FakeHfApi()
    before = tree_hash(d)
    listed = push_folder(d, "org/medvqa", dry_run=True, api=api)
    assert api.calls == [] and set(listed) == ALLOWED
    out = capsys.readouterr().out
    assert "would upload 18 files" in out and "dry run: nothing was sent" in out
    assert tree_hash(d) == before


def test_failure_mid_upload_leaves_folder_and_names_rerun(tmp_path: Path) -> None:
    d = make_full_folder(tmp_path)
    before = tree_hash(d)
    api = FakeHfApi(fail_after=3)
    with pytest.raises(PushFailed) as info:
        push_folder(d, "org/medvqa", public=True, revision="v1", api=api)
    assert len(api.uploaded) == 3  # it did break in the middle
    assert tree_hash(d) == before
    message = str(info.value)
    assert "\n" not in message and "ConnectionError: Connection reset by peer" in message
    rerun = message.split("rerun: ")[1]
    assert shlex.split(rerun) == [
        "medvqa", "push", "--model", str(d), "--repo-id", "org/medvqa", "--public", "--revision", "v1"
    ]  # fmt: skip


def test_cli_failure_exit_2_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    d = make_full_folder(tmp_path)
    monkeypatch.setattr(push_mod, "_default_api", lambda: FakeHfApi(fail_after=0))
    assert main(["push", "--model", str(d), "--repo-id", "org/medvqa"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"rerun: medvqa push --model {d} --repo-id org/medvqa" in err


def test_cli_push_with_double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_full_folder(tmp_path)
    api = FakeHfApi()
    monkeypatch.setattr(push_mod, "_default_api", lambda: api)
    assert main(["push", "--model", str(d), "--repo-id", "org/medvqa", "--public"]) == 0
    assert dict(api.calls)["create_repo"]["private"] is False
    assert set(api.uploaded) == ALLOWED


def test_pickled_weights_stop_the_push(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_full_folder(tmp_path)
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    api = FakeHfApi()
    with pytest.raises(MedVQAUserError, match="pickled weights"):
        push_folder(d, "org/medvqa", api=api)
    assert api.calls == []
    # the CLI, dry run included (a dry run predicts the real push): exit 2, one line naming the file
    capsys.readouterr()
    assert main(["push", "--model", str(d), "--repo-id", "org/medvqa", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "pytorch_model.bin" in captured.err
    assert "refused, stops the push" in captured.out


def test_adapter_only_push(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_adapter_folder(tmp_path)
    api = FakeHfApi()
    uploaded = push_folder(d, "org/medvqa-lora", api=api)
    assert set(uploaded) == {"adapter_config.json", "adapter_model.safetensors", "README.md"}
    out = capsys.readouterr().out
    assert "adapter only" in out and "needs the base model: org/medvqa-init" in out


def test_adapter_with_local_base_warns(tmp_path: Path) -> None:
    d = make_adapter_folder(tmp_path, base=str(tmp_path / "runs" / "init"))
    plan = plan_push(d)
    assert plan.adapter_only and any("local path" in w for w in plan.warnings)


def test_single_file_weights_and_missing_card_warning(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    save_file({"a": np.ones(2, np.float32)}, str(d / "model.safetensors"))
    plan = plan_push(d)
    assert plan.upload == ["config.json", "model.safetensors"]
    assert any("medvqa card" in w for w in plan.warnings)


@pytest.mark.parametrize(
    ("problem", "reason"),
    [
        ("missing_folder", "no such file or folder"),
        ("no_weights", "no safetensors weights"),
        ("only_pickles", "only pickled ones"),
        ("missing_shard", "missing weight files"),
        ("missing_code", "auto_map names remote code"),
        ("bad_repo_id", "not a Hub repo id"),
    ],
)
def test_bad_input_exit_2_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str, reason: str
) -> None:
    d = make_full_folder(tmp_path)
    repo = "org/medvqa"
    if problem == "missing_folder":
        d = tmp_path / "nope"
    elif problem == "no_weights":
        for p in d.glob("model*"):
            p.unlink()
    elif problem == "only_pickles":
        for p in d.glob("model*"):
            p.unlink()
        (d / "pytorch_model.bin").write_bytes(b"x")
    elif problem == "missing_shard":
        (d / "model-00002-of-00002.safetensors").unlink()
    elif problem == "missing_code":
        (d / "configuration_medvqa.py").unlink()  # imported by modeling_medvqa.py
    elif problem == "bad_repo_id":
        repo = "not a repo/id/at all"
    before = tree_hash(d) if d.exists() else None
    assert main(["push", "--model", str(d), "--repo-id", repo, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medvqa push: error: ") and reason in err
    if before is not None:
        assert tree_hash(d) == before


def test_push_the_folder_medvqa_card_wrote(tmp_path: Path) -> None:
    """The two commands together: card, then push; the card and the report go up, scored records do not."""
    from hub_card.card import write_card

    d = make_full_folder(tmp_path)
    (d / "README.md").unlink()
    (d / "report.json").write_text(json.dumps({"overall": {"accuracy": 0.5, "n": 4, "ci95": [0.15, 0.85]}}))
    write_card(d, d / "report.json", repo_id="org/medvqa")
    api = FakeHfApi()
    uploaded = push_folder(d, "org/medvqa", api=api)
    assert "README.md" in uploaded and "report.json" in uploaded and "scored.jsonl" not in uploaded


def test_allow_list_is_enough_to_load_the_real_tiny_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Exactly the files push would send, copied alone, load through the Auto classes (what a Hub user gets)."""
    import shutil

    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    plan = plan_push(tiny_model_dir)
    assert not plan.blocking and not plan.adapter_only
    hub = tmp_path / "as-on-the-hub"
    hub.mkdir()
    for rel in plan.upload:
        shutil.copy2(tiny_model_dir / rel, hub / rel)
    processor = AutoProcessor.from_pretrained(hub, trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(hub, trust_remote_code=True).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What modality?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    size = model.config.vision_config.image_size
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
