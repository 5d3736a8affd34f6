"""Training-time image augmentation shared by every stage (clip, lora, joint); never used at evaluation.

Held-out sources differ from the training ones in colour and framing (a grey close-up of retinal vessels at test
time, whole colour fundus photographs in training), and a model trained on fixed images learns the colour and the
framing of each training source instead of what the modality looks like.  CLIP-style training meets this with
random resized crops, colour jitter and random greyscale (open_clip's ``AugmentationCfg``: ``scale``,
``color_jitter``, ``gray_scale_prob``); we apply the same torchvision transforms to the loaded PIL image, before
each stage's own preprocessing, so that the clip stage (open_clip's transform) and the SFT stages (the MedVQA
processor) see the same augmented images.  Not open_clip's ``image_transform(is_train=True, aug_cfg=...)``
itself: it ends in a normalised tensor for open_clip's model, while the SFT stages hand PIL images to the processor.

``medvqa eval`` and ``medvqa ask`` load images without any of this (their loaders never call it).
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

CROP_SCALE = (0.35, 1.0)
"""Fraction of the image area a random crop keeps (open_clip's default is (0.9, 1.0); smaller reaches close-ups)."""
COLOR_JITTER = (0.4, 0.4, 0.4, 0.1)
"""Brightness, contrast, saturation, hue (open_clip's / SimCLR's usual strengths)."""
COLOR_JITTER_PROB = 0.8
GRAY_SCALE_PROB = 0.3


def training_augmentation(size: int) -> Callable[[Image.Image], Image.Image]:
    """PIL -> PIL: random resized crop to ``size`` px, colour jitter, random greyscale (grey images stay grey)."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                size, scale=CROP_SCALE, interpolation=transforms.InterpolationMode.BICUBIC
            ),
            transforms.RandomApply([transforms.ColorJitter(*COLOR_JITTER)], p=COLOR_JITTER_PROB),
            transforms.RandomGrayscale(p=GRAY_SCALE_PROB),
        ]
    )
