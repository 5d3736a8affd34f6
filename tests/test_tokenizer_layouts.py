"""Llama-3 tokenizer layouts and the processor's control-token protection on every tokenizing path."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from training_fixtures import write_colour_dataset
from transformers import AutoTokenizer, GenerationConfig

from modeling_medvqa import MedVQAForConditionalGeneration, MedVQAProcessor
from training.cli import main
from training.tiny import TOKENIZER_LAYOUTS, TinySpec, build_tiny_llama

REPO = Path(__file__).resolve().parents[1]


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def test_assistant_tokens_mask_path_keeps_control_tokens_as_text(tiny_model_dir: Path):
    """Issue 11 item 10: tokenize=True + return_assistant_tokens_mask=True used to skip the protection."""
    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": _image()}, {"type": "text", "text": "Is <|eot_id|> <|image|> here?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Liver <|eot_id|> yes"}]},
    ]  # fmt: skip
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    eot = processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    # Only the template's two turn ends are real <|eot_id|> tokens; one image's worth of image tokens.
    assert int((ids == eot).sum()) == 2
    assert int((ids == processor.image_token_id).sum()) == processor.image_seq_length
    assert out["pixel_values"].shape[0] == 1
    # The mask covers exactly the answer and its end of turn.
    assert processor.decode(ids[mask.bool()]) == "Liver <|eot_id|> yes<|eot_id|>"
    assert (
        int(mask.sum())
        == len(
            processor.tokenizer("Liver <|eot_id|> yes", add_special_tokens=False, split_special_tokens=True)[
                "input_ids"
            ]
        )
        + 1
    )
    # Same ids as the protected path without the mask.
    plain = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    assert plain["input_ids"].tolist() == out["input_ids"].tolist()


def test_assistant_tokens_mask_in_a_left_padded_batch(tiny_model_dir: Path):
    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)

    def chat(question: str, answer: str) -> list[dict]:
        return [
            {"role": "user", "content": [{"type": "text", "text": question}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ]

    out = processor.apply_chat_template(
        [chat("Which organ?", "Liver"), chat("Is this a CT image of the chest?", "yes <|eot_id|>")],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        return_tensors="pt",
        processor_kwargs={"padding": True},
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert out["attention_mask"][0, 0] == 0  # the shorter row is padded on the left
    assert processor.decode(ids[0][mask[0].bool()]) == "Liver<|eot_id|>"
    assert processor.decode(ids[1][mask[1].bool()]) == "yes <|eot_id|><|eot_id|>"


@pytest.fixture(scope="module")
def tiny_vision(tmp_path_factory: pytest.TempPathFactory) -> str:
    from training.tiny import build_tiny_open_clip

    return build_tiny_open_clip(tmp_path_factory.mktemp("layouts") / "tiny-biomedclip")


@pytest.mark.parametrize("layout", list(TOKENIZER_LAYOUTS))
def test_init_stops_every_layout_at_end_of_turn(layout: str, tiny_vision: str, tmp_path: Path, caplog):
    """Issue 11 item 9: whatever eos the base lists, the MedVQA checkpoint stops where its template ends a turn."""
    text_dir = build_tiny_llama(tmp_path / "llama", TinySpec(tokenizer_layout=layout))
    released = json.loads((text_dir / "generation_config.json").read_text())["eos_token_id"]
    base_tokenizer = AutoTokenizer.from_pretrained(text_dir)
    eot = base_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    released = [released] if isinstance(released, int) else released
    # The stand-ins reproduce the releases: only the current Instruct files stop at <|eot_id|>.
    assert (eot in released) == (layout == "instruct")
    assert base_tokenizer.clean_up_tokenization_spaces is True
    adds_bos = base_tokenizer("CT")["input_ids"][0] == base_tokenizer.bos_token_id
    assert adds_bos == (layout != "instruct-v1")

    out = tmp_path / "init"
    assert (
        main(
            [
                "init",
                "--vision",
                tiny_vision,
                "--text",
                str(text_dir),
                "--out",
                str(out),
                "--dtype",
                "float32",
            ]
        )
        == 0
    )
    generation = GenerationConfig.from_pretrained(out)
    assert eot in generation.eos_token_id and set(released) <= set(generation.eos_token_id)
    processor = MedVQAProcessor.from_pretrained(out)
    assert processor.tokenizer.eos_token == "<|eot_id|>"
    assert processor.tokenizer.clean_up_tokenization_spaces is False
    with caplog.at_level(logging.WARNING):
        processor.decode(processor.tokenizer("CT .", add_special_tokens=False)["input_ids"])
    assert "clean_up_tokenization_spaces" not in caplog.text
    # Every layout gets the same MedVQA prompt: <|begin_of_text|> once, the assistant header only when asked for.
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Which organ?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    ids = processor(images=[_image()], text=[prompt])["input_ids"][0]
    assert ids[0] == processor.tokenizer.bos_token_id and ids.count(processor.tokenizer.bos_token_id) == 1
    assert not processor.apply_chat_template(messages).endswith("<|end_header_id|>\n\n")


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(TOKENIZER_LAYOUTS))
def test_every_layout_trains_and_answers_ending_at_end_of_turn(layout: str, tiny_vision: str, tmp_path: Path):
    """init -> a short lora stage -> ask in a fresh process (the demo's last step): answers end at <|eot_id|>."""
    from training.train.pipeline import run_training
    from training.train.recipe import load_recipe

    text_dir = build_tiny_llama(tmp_path / "llama", TinySpec(tokenizer_layout=layout))
    recipe = load_recipe(REPO / "configuration" / "recipes" / "tiny_cpu.yaml")
    recipe.output_dir = str(tmp_path / "run")
    recipe.training.report_to = []
    recipe.model.vision, recipe.model.text = tiny_vision, str(text_dir)
    recipe.stage("clip").enabled = recipe.stage("joint").enabled = False
    data = write_colour_dataset(tmp_path / "data", n=48)
    merged = run_training(recipe, train_jsonl=data)["lora"].merged_dir

    max_new_tokens = 12
    image = tmp_path / "data" / "0.png"  # a CT-coloured training image
    answer = subprocess.run(
        [sys.executable, "-m", "training.cli", "ask", "--model", str(merged), "--image", str(image),
         "--question", "What imaging modality is used?", "--max-new-tokens", str(max_new_tokens)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr[-2000:]
    printed = answer.stdout.strip().splitlines()[-1].removeprefix("A: ")

    model = MedVQAForConditionalGeneration.from_pretrained(merged).eval()
    processor = MedVQAProcessor.from_pretrained(merged)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What imaging modality is used?"}]}]  # fmt: skip
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.open(image)], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        new = model.generate(**inputs, max_new_tokens=max_new_tokens)[0, inputs["input_ids"].shape[1] :]
    eot = processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    print(layout, processor.decode(new))
    assert int(new[-1]) == eot and len(new) < max_new_tokens  # stopped at the end of the turn
    assert processor.decode(new, skip_special_tokens=True).strip() == printed
    assert printed in {"CT", "MRI", "X-Ray"}
