"""Training-time image augmentation shared by every stage (clip, lora, joint); never used at evaluation.

Held-out sources differ from the training ones in colour and framing (a grey close-up of retinal vessels at test
time, whole colour fundus photographs in training), and a model trained on fixed images learns the colour and the
framing of each training source instead of what the modality looks like.  CLIP-style training meets this with
random resized crops and random greyscale (open_clip's ``AugmentationCfg``: ``scale``, ``gray_scale_prob``); we
apply the same torchvision transforms to the loaded PIL image, before each stage's own preprocessing, so that the
clip stage (open_clip's transform) and the SFT stages (the MedVQA processor) see the same augmented images.  Not
open_clip's ``image_transform(is_train=True, aug_cfg=...)`` itself: it ends in a normalised tensor for open_clip's
model, while the SFT stages hand PIL images to the processor.

No colour jitter (open_clip's ``color_jitter``), by measurement: brightness and contrast are part of what tells the
modalities apart (a CT window, an MRI sequence's contrast, the black field around an ultrasound fan).  On the demo's
held-out sources, with the tiny recipe, adding jitter (0.4, 0.4, 0.4, 0.1 with p = 0.8) to the crops and greyscale
took Modality Recognition from 59.6% (image-blind 37.2%) to 37.2% (image-blind 27.7%); README, "Does the model use
the image?".

Each draw is a function of (recipe seed, epoch, example) rather than of the process's random state
(:class:`TrainingAugmentation`): ``Trainer`` restores the global RNG on resume only after it has fetched, and so
augmented, the first batch, and each DataLoader worker holds its own copy of that state.  A keyed draw is the same
in a straight run, a resumed one and any worker, so a resumed run ends with the same weights.  The example is named
by its pixels and its question, not by its path, so the same data in another folder trains the same way.

``medvqa eval`` and ``medvqa ask`` load images without any of this (their loaders never call it).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from PIL import Image

CROP_SCALE = (0.35, 1.0)
"""Fraction of the image area a random crop keeps (open_clip's default is (0.9, 1.0); smaller reaches close-ups)."""
GRAY_SCALE_PROB = 0.3
"""Held-out sources may be grey where the training ones are in colour (red-free fundus, a stain's single channel)."""


def training_augmentation(size: int) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL: random resized crop to ``size`` px, then random greyscale (grey images stay grey)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                size, scale=CROP_SCALE, interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomGrayscale(p=GRAY_SCALE_PROB),
        ]
    )


class TrainingAugmentation:
    """``(image, key) -> image``: :func:`training_augmentation` with its randomness drawn from (seed, epoch, the
    image's pixels, key).

    ``key`` tells apart the examples of one image (its question); the same image and key in the same epoch get the
    same crop, another epoch a new one.  :meth:`epoch_callback` keeps ``epoch`` in step with the ``Trainer``; it is
    set in the main process before each epoch's DataLoader iterator (and its workers) is made.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.transform = training_augmentation(size)
        self.seed = seed
        self.epoch = 0

    def __call__(self, image: Image.Image, key: str) -> Image.Image:
        import torch

        digest = hashlib.blake2b(f"{self.seed}\0{self.epoch}\0{key}\0".encode(), digest_size=8)
        digest.update(f"{image.mode}{image.size}".encode())
        digest.update(image.tobytes())  # ~50 KB for a 160 px image; what the draw would be without a path
        # torchvision draws from torch's global RNG: seed a forked copy and leave the global stream untouched
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int.from_bytes(digest.digest(), "little") >> 1)
            return self.transform(image)

    def epoch_callback(self):
        """A ``TrainerCallback`` that sets ``epoch`` from the trainer's state at the start of every epoch."""
        from transformers import TrainerCallback

        augmentation = self

        class AugmentationEpoch(TrainerCallback):
            def on_epoch_begin(self, args, state, control, **kwargs):
                # state.epoch is fractional (resumed mid-epoch: 0.375 -> epoch 0); None before the first step
                augmentation.epoch = math.floor((state.epoch or 0.0) + 1e-9)

        return AugmentationEpoch()
