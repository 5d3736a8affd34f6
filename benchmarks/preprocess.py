"""Preprocessing: our loader + processor vs open_clip's BiomedCLIP transform on the same images, and DICOM decode.

The images are real medical images that ship inside installed packages (scikit-image: microscopy ``cell``,
histology ``immunohistochemistry``, fundus ``retina``, ``microaneurysms``; pydicom: ``CT_small.dcm`` and
``MR_small.dcm`` windowed to 8 bit and enlarged to radiograph-like sizes), written as PNG/JPEG files, as a dataset
holds them.  Gray and colour, small and large, as in OmniMedVQA.

* ours: ``training.images.load_medical_image(path)`` then the checkpoint's image processor
  (``build_image_processor``: BiomedCLIP's shortest-side bicubic resize, centre crop, OpenAI mean/std).
* open_clip: ``preprocess(Image.open(path))`` with ``preprocess`` from ``open_clip.create_model_and_transforms``
  on a BiomedCLIP-shaped local model (timm trunk, same size, same mean/std), as open_clip's users load images.

Both per image (a data loader's ``__getitem__``) and per batch (ours: the collator's one processor call for the
batch; open_clip: its transform per image, then ``torch.stack``, as the default collate does).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_images(folder: Path, size: int = 224) -> list[Path]:
    """The benchmark's image files (real medical images from installed packages)."""
    import numpy as np
    import pydicom
    import skimage.data
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True, exist_ok=True)

    def window(name: str) -> np.ndarray:
        ds = pydicom.dcmread(get_testdata_file(name))
        arr = ds.pixel_array.astype(np.float32)
        lo, hi = np.percentile(arr, (0.5, 99.5))
        return (np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)

    items = {
        "cell.png": Image.fromarray(skimage.data.cell()),
        "immunohistochemistry.jpg": Image.fromarray(skimage.data.immunohistochemistry()),
        "retina.jpg": Image.fromarray(skimage.data.retina()),
        "microaneurysms.png": Image.fromarray(skimage.data.microaneurysms()),
        "ct_512.png": Image.fromarray(window("CT_small.dcm")).resize((512, 512), Image.BICUBIC),
        "radiograph_2048.jpg": Image.fromarray(window("MR_small.dcm")).resize((2048, 1792), Image.BICUBIC),
    }
    paths = []
    for name, image in items.items():
        path = folder / name
        image.save(path, quality=92) if name.endswith(".jpg") else image.save(path)
        paths.append(path)
    return paths


def _open_clip_preprocess(work: Path, image_size: int):
    """open_clip's eval transform of a BiomedCLIP-shaped local model (timm trunk, OpenAI mean/std)."""
    import open_clip

    from training.tiny import TinySpec, build_tiny_open_clip

    model_id = build_tiny_open_clip(work / "open_clip_model", TinySpec(image_size=image_size))
    model, _, preprocess = open_clip.create_model_and_transforms(model_id)
    return model, model_id, preprocess


def _rate(fn: Callable[[], Any], n_images: int, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(n_images / (time.perf_counter() - start))
    return out


def preprocessing(work: Path, repeats: int, image_size: int = 224, batch_copies: int = 2) -> dict[str, Any]:
    """images/s of ours and open_clip on the same files, per image and per batch, with their ratios."""
    import torch
    from PIL import Image

    from modeling_medvqa import MedVQAProcessor
    from training.images import load_medical_image as load_image
    from training.init_checkpoint import (
        build_image_processor,
        prepare_tokenizer,
        vision_config_from_open_clip,
    )
    from training.tiny import build_tiny_tokenizer

    paths = write_images(work / "images")
    clip_model, model_id, preprocess = _open_clip_preprocess(work, image_size)
    import open_clip

    # The processor the model uses (its images-only call), fed as training / eval / ask feed it.
    processor = MedVQAProcessor(
        image_processor=build_image_processor(
            vision_config_from_open_clip(clip_model, open_clip.get_model_config(model_id))
        ),
        tokenizer=prepare_tokenizer(build_tiny_tokenizer(work / "tokenizer")),
    )

    def load_medical_image(path):
        return load_image(path, keep_gray=True)

    batch = paths * batch_copies

    def ours_each():
        for p in batch:
            processor(images=[load_medical_image(p)], return_tensors="pt")

    def theirs_each():
        for p in batch:
            preprocess(Image.open(p)).unsqueeze(0)

    def ours_batch():
        processor(images=[load_medical_image(p) for p in batch], return_tensors="pt")

    def theirs_batch():
        torch.stack([preprocess(Image.open(p)) for p in batch])

    # Same output (up to the two bicubic implementations) before timing anything.
    a = processor(images=[load_medical_image(p) for p in paths], return_tensors="pt")["pixel_values"]
    b = torch.stack([preprocess(Image.open(p)) for p in paths])
    max_diff = float((a - b).abs().max())

    fns = {
        "ours_each": ours_each,
        "theirs_each": theirs_each,
        "ours_batch": ours_batch,
        "theirs_batch": theirs_batch,
    }
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for r in range(repeats):
        for name in fns if r % 2 == 0 else reversed(list(fns)):
            rates[name] += _rate(fns[name], len(batch), 1)
    med = {k: statistics.median(v) for k, v in rates.items()}
    per_image = {}
    for p in paths:  # where the time goes, image by image
        t_ours = min(
            _timeit(lambda p=p: processor(images=[load_medical_image(p)], return_tensors="pt"))
            for _ in range(3)
        )
        t_theirs = min(_timeit(lambda p=p: preprocess(Image.open(p))) for _ in range(3))
        with Image.open(p) as im:
            per_image[p.name] = {
                "size": list(im.size),
                "mode": im.mode,
                "ours_ms": 1e3 * t_ours,
                "open_clip_ms": 1e3 * t_theirs,
            }
    return {
        "ours_images_per_s": med["ours_each"],
        "open_clip_images_per_s": med["theirs_each"],
        "ratio": med["ours_each"] / med["theirs_each"],
        "batched": {
            "ours_images_per_s": med["ours_batch"],
            "open_clip_images_per_s": med["theirs_batch"],
            "ratio": med["ours_batch"] / med["theirs_batch"],
        },
        "images": len(paths),
        "max_abs_diff_vs_open_clip": max_diff,
        "per_image": per_image,
        "repeats": repeats,
    }


def _timeit(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def dicom(repeats: int, n: int = 50) -> dict[str, Any]:
    """Decode + window of pydicom's bundled CT (``CT_small.dcm``): our loader vs a bare pydicom reference.

    The reference does the least a correct pipeline must: read, rescale slope/intercept, the file's VOI window,
    8-bit, RGB -- what ``load_medical_image`` does, without its checks.
    """
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    from training.images import load_medical_image

    path = get_testdata_file("CT_small.dcm")

    def ours():
        for _ in range(n):
            load_medical_image(path)

    def reference():
        for _ in range(n):
            ds = pydicom.dcmread(path)
            arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
            lo, hi = float(arr.min()), float(arr.max())
            Image.fromarray(((arr - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8), "L").convert("RGB")

    ours(), reference()
    r_ours, r_ref = [], []
    for _ in range(repeats):
        r_ours += _rate(ours, n, 1)
        r_ref += _rate(reference, n, 1)
    image = load_medical_image(path)
    return {
        "file": "CT_small.dcm",
        "size": list(image.size),
        "ours_images_per_s": statistics.median(r_ours),
        "pydicom_reference_images_per_s": statistics.median(r_ref),
        "ratio": statistics.median(r_ours) / statistics.median(r_ref),
    }
