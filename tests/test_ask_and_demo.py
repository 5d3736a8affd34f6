"""``medvqa ask`` (every image format, several questions, one encoding, bad input), the pipeline, the demo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.cli import main


def _dicom_ct() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm", download=False))


def _nifti_brain() -> Path:
    from nibabel.testing import data_path

    return Path(data_path) / "anatomical.nii"


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ask_images")
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (120, 150, 3), dtype=np.uint8)
    Image.fromarray(array).save(folder / "image.png")
    Image.fromarray(array).save(folder / "image.jpg", quality=90)
    Image.fromarray((rng.random((100, 100)) * 4095).astype(np.uint16)).save(folder / "scan16.png")
    return {
        "png": folder / "image.png",
        "jpeg": folder / "image.jpg",
        "png16": folder / "scan16.png",
        "dicom": _dicom_ct(),
        "nifti": _nifti_brain(),
    }


@pytest.mark.parametrize("kind", ["png", "jpeg", "png16", "dicom", "nifti"])
def test_ask_answers_every_question_for_every_format(tiny_model_dir: Path, image_files, kind, capsys):
    questions = ["What imaging modality is used?", "Which organ is shown?", "Is this a CT image?"]
    args = ["ask", "--model", str(tiny_model_dir), "--image", str(image_files[kind]), "--max-new-tokens", "4"]
    for question in questions:
        args += ["--question", question]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line[3:] for line in lines if line.startswith("Q: ")] == questions
    assert len([line for line in lines if line.startswith("A:")]) == 3


def test_several_questions_encode_the_image_once_and_match_one_at_a_time(tiny_model_dir: Path, image_files):
    from training.ask import answer_questions, load_model
    from training.images import load_medical_image

    model, processor = load_model(tiny_model_dir)
    image = load_medical_image(image_files["dicom"])
    calls = []
    original = model.model.vision_tower.forward
    model.model.vision_tower.forward = lambda px: calls.append(px.shape[0]) or original(px)
    questions = ["What imaging modality is used?", "Which organ is shown in this slice?", "Is this a CT?"]
    together = answer_questions(model, processor, image, questions, max_new_tokens=6)
    assert calls == [1]  # one image through the vision tower for three questions
    alone = [answer_questions(model, processor, image, [q], max_new_tokens=6)[0] for q in questions]
    assert together == alone


@pytest.mark.parametrize(
    "make_args, reason",
    [
        (lambda m, d: ["--model", str(m), "--image", str(d / "missing.png")], "no such file"),
        (lambda m, d: ["--model", str(m), "--image", str(d / "text.png")], "image"),
        (lambda m, d: ["--model", str(d), "--image", str(d / "ok.png")], "not a model folder"),
    ],
)
def test_ask_bad_input_exits_2_with_one_line(tiny_model_dir, tmp_path, capsys, make_args, reason):
    (tmp_path / "text.png").write_text("this is not an image\n")
    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    code = main(["ask", *make_args(tiny_model_dir, tmp_path), "--question", "Which organ?"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and reason in err.lower()


def test_transformers_pipeline_answers_through_remote_code(tiny_model_dir: Path, image_files):
    from transformers import pipeline

    pipe = pipeline("image-text-to-text", model=str(tiny_model_dir), trust_remote_code=True)
    image = Image.open(image_files["png"])
    messages = [
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Organ?"}]}
    ]
    out = pipe(text=messages, max_new_tokens=4)
    reply = out[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)


@pytest.mark.slow
def test_demo_runs_the_whole_chain(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out, as `make demo` passes it
    assert main(["demo", "--out", "demo"]) == 0
    out = tmp_path / "demo"
    printed = capsys.readouterr().out
    for step in range(1, 7):
        assert f"[{step}/" in printed
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["n"] > 0 and 0.0 <= report["overall"]["accuracy"] <= 1.0
    for name in ("config.json", "model.safetensors", "README.md", "report.json", "modeling_medvqa.py"):
        assert (out / "model" / name).is_file(), name
    assert list((out / "eval").glob("*.png"))
    stages = json.loads((out / "runs" / "tiny_cpu" / "stages.json").read_text())
    for stage in ("clip", "lora", "joint"):
        assert stages[stage]["last_loss"] < stages[stage]["first_loss"], stage
    assert "ground truth:" in printed and "majority" in printed
    # the image-blind run on the same questions, printed and in the report
    assert "image-blind" in printed and "McNemar p" in printed
    blind = report["image_blind"]
    assert blind["method"] == "blank" and blind["paired_difference"]["overall"]["n"] == report["n"]
    # On sources it never saw in training, the image must make its modality answers better than its own image-blind
    # ones, beyond chance (exact McNemar); the tiny recipe's augmentation and epochs are set for this (README).
    modality = blind["paired_difference"]["by_question_type"]["Modality Recognition"]
    assert modality["real"] > modality["blind"] and modality["mcnemar_p"] < 0.05, modality
    # Trained on held-out source files, the tiny model still beats answering every question with the majority answer.
    assert report["overall"]["accuracy"] > report["baselines"]["majority_answer"]["accuracy"]
