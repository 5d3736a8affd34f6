"""Training: label masking, the three stages, resume, per-module learning rates, LoRA on the LM only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import write_colour_dataset

from modeling_medvqa import MedVQAProcessor
from training.errors import MedVQAUserError
from training.train.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO / "configuration" / "recipes" / "tiny_cpu.yaml"


def _tiny_recipe(output_dir: Path, **stage_overrides):
    recipe = load_recipe(TINY_RECIPE)
    recipe.output_dir = str(output_dir)
    recipe.training.report_to = []
    for stage, values in stage_overrides.items():
        for key, value in values.items():
            setattr(recipe.stage(stage), key, value)
    return recipe


def test_collated_batch_masks_prompt_image_and_padding(tiny_model_dir: Path, tmp_path: Path):
    from training.train.pipeline import read_train_records
    from training.train.sft_data import MedVQACollator, build_sft_dataset

    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)
    records, base = read_train_records(write_colour_dataset(tmp_path, n=3))
    records[1]["question"] = (
        "Which imaging modality was used to acquire this picture of the body?"  # longer prompt
    )
    records[2]["answer"] = "X-Ray radiograph of the chest"  # longer answer
    dataset = build_sft_dataset(records, base)
    batch = MedVQACollator(processor=processor)([dataset[i] for i in range(3)])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert batch["pixel_values"].shape == (3, 3, 160, 160)
    eot = processor.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for row, record in enumerate(records):
        kept = labels[row][labels[row] != -100]
        # Exactly the answer and the end of turn carry loss.
        assert processor.decode(kept) == record["answer"] + "<|eot_id|>"
        assert kept[-1].item() == eot
        image_positions = ids[row] == processor.image_token_id
        assert int(image_positions.sum()) == processor.image_seq_length
        assert (labels[row][image_positions] == -100).all()
        assert (labels[row][mask[row] == 0] == -100).all()
    assert (mask == 0).any()  # the batch really holds padding


def test_recipe_errors_name_the_key(tmp_path: Path):
    with pytest.raises(MedVQAUserError, match="unknown key"):
        recipe_from_dict({"name": "x", "output_dir": "y", "training": {"per_device_batch": 3}}, "r.yaml")
    with pytest.raises(MedVQAUserError, match="unknown stage"):
        recipe_from_dict({"name": "x", "output_dir": "y", "stages": {"pretrain": {}}}, "r.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(MedVQAUserError, match="not valid YAML"):
        load_recipe(bad)


def test_paper_recipe_is_the_papers_setup():
    recipe = load_recipe(REPO / "configuration" / "recipes" / "paper_llama3_8b.yaml")
    assert recipe.training.global_batch_size == 128 and recipe.training.num_gpus == 2
    assert recipe.training.bf16 and recipe.training.gradient_checkpointing
    assert (recipe.training.optim, recipe.training.lr_scheduler_type, recipe.training.warmup_steps) == (
        "adamw_torch",
        "cosine",
        100,
    )
    assert (recipe.lora.r, recipe.lora.alpha) == (8, 32)
    assert recipe.model.text == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert recipe.model.vision == "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"


def test_lora_targets_the_language_model_only_and_projector_trains(tiny_model_dir: Path):
    from modeling_medvqa import MedVQAForConditionalGeneration
    from training.train.sft_stages import build_peft_model

    recipe = _tiny_recipe(Path("unused"))
    peft_model = build_peft_model(
        MedVQAForConditionalGeneration.from_pretrained(tiny_model_dir), recipe, "lora"
    )
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    lora = [n for n in trainable if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    assert any("multi_modal_projector.modules_to_save" in n for n in trainable)
    assert not any("vision_tower" in n for n in trainable)
    lora_a = next(m for n, m in peft_model.named_modules() if n.endswith("q_proj.lora_A"))
    assert lora_a["default"].out_features == 8
    assert peft_model.peft_config["default"].lora_alpha == 32


def test_joint_trains_only_the_last_vision_blocks(tiny_model_dir: Path):
    from modeling_medvqa import MedVQAForConditionalGeneration
    from training.train.sft_stages import build_peft_model

    recipe = _tiny_recipe(Path("unused"))
    recipe.stage("joint").vision_trainable_blocks = 2
    model = MedVQAForConditionalGeneration.from_pretrained(tiny_model_dir)
    peft_model = build_peft_model(model, recipe, "joint")
    vision = {n for n, p in peft_model.named_parameters() if p.requires_grad and "vision_tower" in n}
    blocks = {int(n.split("trunk.blocks.")[1].split(".")[0]) for n in vision}
    n_blocks = model.config.num_vision_blocks_used
    assert blocks == {n_blocks - 2, n_blocks - 1}


def test_module_learning_rates_build_separate_groups(tiny_model_dir: Path, tmp_path: Path):
    from modeling_medvqa import MedVQAForConditionalGeneration
    from training.train.pipeline import read_train_records
    from training.train.sft_data import MedVQACollator, build_sft_dataset
    from training.train.sft_stages import _sft_trainer_class, build_peft_model, training_arguments

    recipe = _tiny_recipe(tmp_path / "run")
    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)
    peft_model = build_peft_model(
        MedVQAForConditionalGeneration.from_pretrained(tiny_model_dir), recipe, "joint"
    )
    records, base = read_train_records(write_colour_dataset(tmp_path / "data", n=4))
    trainer = _sft_trainer_class()(
        model=peft_model,
        args=training_arguments(recipe, "joint", tmp_path / "out", learning_rate=1e-3),
        train_dataset=build_sft_dataset(records, base),
        processing_class=processor,
        data_collator=MedVQACollator(processor=processor),
    )
    trainer.module_learning_rates = {"multi_modal_projector": 5e-3, "vision_tower": 1e-5}
    optimizer = trainer.create_optimizer()
    lrs = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            lrs[id(p)] = group["lr"]
    by_name = {n: lrs[id(p)] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert {v for n, v in by_name.items() if "multi_modal_projector" in n} == {5e-3}
    assert {v for n, v in by_name.items() if "vision_tower" in n} == {1e-5}
    assert {v for n, v in by_name.items() if "lora_" in n} == {1e-3}


class _Kill(Exception):
    pass


def test_augmentation_epoch_follows_the_trainer_state_also_when_resumed_mid_epoch():
    from transformers import TrainerControl, TrainerState

    from training.train.augment import TrainingAugmentation

    augmentation = TrainingAugmentation(32, seed=0)
    callback = augmentation.epoch_callback()
    for epoch, expected in ((None, 0), (0.0, 0), (0.375, 0), (1.0, 1), (2.75, 2), (3.0, 3)):
        callback.on_epoch_begin(None, TrainerState(epoch=epoch), TrainerControl())
        assert augmentation.epoch == expected, epoch


def test_resume_after_a_kill_ends_with_the_same_adapter(tmp_path: Path):
    from transformers import TrainerCallback

    from training.train.checkpoints import COMPLETE_MARKER
    from training.train.pipeline import run_training

    data = write_colour_dataset(tmp_path / "data", n=32)

    def recipe_for(out: Path):
        recipe = _tiny_recipe(out, lora={"max_steps": 6, "num_train_epochs": 1})
        recipe.data.augment = True  # random crops too must come out the same after a resume
        # 4 steps an epoch: the resumed run crosses into epoch 1
        recipe.training.per_device_train_batch_size = 8
        recipe.training.save_steps = 3
        recipe.training.logging_steps = 1
        return recipe

    straight = run_training(recipe_for(tmp_path / "straight"), ["lora"], train_jsonl=data)["lora"]
    assert straight.losses[-1] < straight.losses[0]  # LoRA + projector under SFTTrainer learn within 6 steps

    class KillAfterCheckpoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 4:  # the checkpoint of step 3 is on disk; step 4 is lost with the process
                raise _Kill

    killed_dir = tmp_path / "killed"
    with pytest.raises(_Kill):
        run_training(recipe_for(killed_dir), ["lora"], train_jsonl=data, callbacks=[KillAfterCheckpoint()])
    assert (killed_dir / "lora" / "checkpoint-3" / COMPLETE_MARKER).is_file()
    # A half-written checkpoint (no marker) must be ignored by resume.
    (killed_dir / "lora" / "checkpoint-5").mkdir()
    resumed = run_training(recipe_for(killed_dir), ["lora"], train_jsonl=data, resume=True)["lora"]
    assert resumed.resumed_from == killed_dir / "lora" / "checkpoint-3"

    a = load_file(str(straight.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    assert straight.losses[-1] == pytest.approx(resumed.losses[-1], rel=1e-4)


@pytest.mark.slow
def test_three_stages_run_and_each_loss_falls(tmp_path: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from training.train.pipeline import run_training

    data = write_colour_dataset(tmp_path / "data", n=96)
    recipe = _tiny_recipe(tmp_path / "run", clip={"num_train_epochs": 4})
    recipe.training.logging_steps = 1
    results = run_training(recipe, train_jsonl=data)
    for stage in ("clip", "lora", "joint"):
        losses = results[stage].losses
        print(stage, [round(x, 3) for x in losses])
        assert len(losses) >= 3
        assert min(losses[-2:]) < losses[0], stage
    merged = results["joint"].merged_dir
    model = AutoModelForImageTextToText.from_pretrained(merged, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(merged, trust_remote_code=True)
    assert model.config.model_type == "medvqa" and processor.image_seq_length == 100
    adapter = AutoModelForImageTextToText.from_pretrained(
        results["joint"].adapter_dir, trust_remote_code=True
    )
    assert hasattr(adapter, "peft_config")
    assert not (results["joint"].adapter_dir / "training_args.bin").exists()


def test_training_records_resolve_from_a_relative_jsonl_path(tmp_path: Path, monkeypatch):
    from training.train.pipeline import read_train_records

    write_colour_dataset(tmp_path / "out" / "data", n=3)
    monkeypatch.chdir(tmp_path)
    records, _ = read_train_records(Path("out") / "data" / "train.jsonl")
    assert all(Path(r["image"]).is_absolute() and Path(r["image"]).is_file() for r in records)


def _textured_dataset(folder: Path) -> Path:
    """Two records whose images have texture and colour, so a crop or a colour change alters the pixels."""
    import json

    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, mode in enumerate(["RGB", "L"]):
        shape = (96, 80, 3) if mode == "RGB" else (96, 80)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
        lines.append(
            {"question_id": str(i), "dataset": "synthetic", "image": f"{i}.png", "question": "Which modality?",
             "answer": "CT", "answer_type": "open", "modality": "CT", "modality_raw": "CT",
             "question_type": "Modality Recognition", "options": ["CT", "MRI"], "source": "s", "split": "train"}
        )  # fmt: skip
    (folder / "train.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder / "train.jsonl"


def test_training_images_are_augmented_in_every_stage_and_never_at_evaluation(
    tiny_model_dir: Path, tiny_bases: dict[str, str], tmp_path: Path
):
    import open_clip

    from training.evaluation.evaluate import ImageLoader
    from training.evaluation.prompting import encode, render
    from training.init_checkpoint import load_open_clip
    from training.train.augment import TrainingAugmentation
    from training.train.clip_stage import ClipCollator, image_caption_pairs
    from training.train.pipeline import read_train_records
    from training.train.sft_data import MedVQACollator, build_sft_dataset
    from training.train.sft_stages import stage_augmentation

    recipe = _tiny_recipe(tmp_path / "run")
    recipe.data.augment = True
    processor = MedVQAProcessor.from_pretrained(tiny_model_dir)
    jsonl = _textured_dataset(tmp_path / "data")
    records, base = read_train_records(jsonl)
    examples = list(build_sft_dataset(records, base))

    def sft_pixels(augment):
        return MedVQACollator(processor=processor, augment=augment)(examples)["pixel_values"]

    augmented = stage_augmentation(recipe, processor)
    first = sft_pixels(augmented)
    assert first.shape == sft_pixels(None).shape == (2, 3, 160, 160)
    assert not torch.equal(first, sft_pixels(None))
    # The draw is keyed on (seed, epoch, pixels + question), not on the process's RNG: the same in any process and order
    # (what makes a resumed run exact), and left out of torch's global random stream.
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert torch.equal(sft_pixels(augmented), first)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(sft_pixels(stage_augmentation(recipe, processor)), first)
    # keyed on the pixels, not the path: the same data in another folder gets the same draws
    moved, moved_base = read_train_records(_textured_dataset(tmp_path / "elsewhere"))
    collate = MedVQACollator(processor=processor, augment=stage_augmentation(recipe, processor))
    assert torch.equal(collate(list(build_sft_dataset(moved, moved_base)))["pixel_values"], first)
    augmented.epoch = 1  # set by its TrainerCallback at each epoch's start
    assert not torch.equal(sft_pixels(augmented), first)
    recipe.seed += 1
    assert not torch.equal(sft_pixels(stage_augmentation(recipe, processor)), first)
    mean = torch.tensor(processor.image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(processor.image_processor.image_std).view(3, 1, 1)
    grey = first[1] * std + mean  # the grey image, un-normalised: its three channels stay equal
    torch.testing.assert_close(grey[0], grey[1])
    torch.testing.assert_close(grey[1], grey[2])
    recipe.data.augment = False
    assert stage_augmentation(recipe, processor) is None
    assert torch.equal(sft_pixels(None), sft_pixels(None))

    clip_model, _ = load_open_clip(tiny_bases["vision"])
    pp = open_clip.get_model_preprocess_cfg(clip_model)
    transform = open_clip.image_transform(pp["size"], is_train=False, mean=pp["mean"], std=pp["std"])
    pairs = image_caption_pairs(records, base, "{modality} image.")
    tokenizer = open_clip.get_tokenizer(tiny_bases["vision"])
    plain = ClipCollator(transform, tokenizer)(pairs)["pixel_values"]
    augmentation = TrainingAugmentation(pp["size"], seed=0)
    clip_augment = ClipCollator(transform, tokenizer, augmentation)
    clip_first = clip_augment(pairs)["pixel_values"]
    assert not torch.equal(clip_first, plain)
    assert torch.equal(clip_augment(pairs)["pixel_values"], clip_first)
    augmentation.epoch = 1
    assert not torch.equal(clip_augment(pairs)["pixel_values"], clip_first)
    assert torch.equal(plain, ClipCollator(transform, tokenizer)(pairs)["pixel_values"])

    # Evaluation (and ask, which shares the processor path) sees the image as it is, the same on every call.
    prompt = render(processor, records[0]["question"])

    def eval_pixels():
        image = ImageLoader(jsonl)(records[0])  # a new loader each time: nothing cached
        return encode(processor, [image], [prompt], padding_side="left")["pixel_values"]

    assert torch.equal(eval_pixels(), eval_pixels())
    assert torch.equal(eval_pixels()[0], sft_pixels(None)[0])
