"""Build the bundled sample set: real medical images that ship inside installed packages, in the OmniMedVQA layout.

``medvqa data samples --out DIR`` writes::

    DIR/QA_information/Open-access/<Dataset>.json      (JSON lists of rows, as in the release)
    DIR/QA_information/Restricted-access/<Dataset>.json
    DIR/Images/<Dataset>/<name>.png
    DIR/README.md                                       (sources, counts, how the images were made)

Sources (all present in the installed packages, nothing is downloaded; DESIGN.md §8):

* CT: pydicom ``J2K_pixelrep_mismatch.dcm`` and ``693_J2KI.dcm`` (head), ``CT_small.dcm`` (spine);
* MRI: nibabel ``anatomical.nii`` (T1 brain), ``example4d.nii.gz`` (EPI brain), ``functional.nii`` (brain,
  the Restricted-access dataset), pydicom ``examples_overlay.dcm`` (abdomen) and ``MR_small.dcm``;
* Ultrasound: pydicom ``examples_ybr_color.dcm`` (echocardiography), ``examples_jpeg2k.dcm`` (Doppler, lymph
  node), ``examples_palette.dcm`` (obstetric); their burned-in text (patient id, date, institution) is painted
  black before anything is cut;
* Microscopy: scikit-image ``cell`` and ``immunohistochemistry`` (colour tiles and their haematoxylin channel);
* Fundus Photography: scikit-image ``retina`` (colour and red-free) and ``microaneurysms``.

Every image goes through :func:`training.images.load_medical_image` (so DICOM / NIfTI are windowed; CT also
with brain / bone / soft-tissue windows), is cut into slices, frames, crops or tiles, shrunk to at most
:data:`IMAGE_SIZE` pixels and written as PNG.  Only pixels leave the DICOM files: no patient field is copied.
Each image records the file it came from, as ``image_source`` in its QA rows (``pydicom:CT_small.dcm``) and as
a ``Source`` text chunk in the PNG; ``medvqa data convert`` keeps all images of one source file in one split.

Questions are about what the image shows, so that a model can learn them from pixels: the modality (open and
balanced yes/no), the organ or region (open and yes/no) and, for the stained tissue, the stain.  Templates vary
as in the release; a few are phrased "Which of the following ..." and some answers carry a trailing dot, and the
modality strings are spelled as in the release (``MR (Mag-netic Resonance Imaging)``), one file with the key
``modality``: ``medvqa data convert`` meets the release's quirks on the demo data too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from training.cli_types import random_seed
from training.errors import MedVQAUserError
from training.output_dir import prepare_output_dir

IMAGE_SIZE = 160
"""Longest side of the sample PNGs (the model resizes to 224 anyway; small files keep the set ~2 MB)."""

# Release spellings of the modality strings (DESIGN.md §4), used in the QA files like the real release.
RELEASE_MODALITY = {
    "CT": "CT(Computed Tomography)",
    "MRI": "MR (Mag-netic Resonance Imaging)",
    "Ultrasound": "Ultrasound",
    "Microscopy": "Microscopy Images",
    "Fundus Photography": "Fundus Photography",
}
MODALITIES = tuple(RELEASE_MODALITY)


@dataclass(frozen=True)
class Source:
    """One file inside an installed package and how to cut it into images."""

    ref: str  # "package:file", recorded as image_source
    dataset: str
    modality: str
    anatomy: str | None
    cut: Callable[[Path], Iterator[Image.Image]]
    locate: Callable[[], Path]
    access: str = "Open-access"


# ---------------------------------------------------------------------------------------------- locating ----


def _pydicom_file(name: str) -> Callable[[], Path]:
    def locate() -> Path:
        import pydicom.data

        # the folder pydicom ships; get_testdata_file() could try a download for files that are not there
        p = Path(pydicom.data.__file__).parent / "test_files" / name
        if not p.is_file():
            raise MedVQAUserError(f"pydicom:{name}", "not in the installed pydicom (needed for the samples)")
        return p

    return locate


def _nibabel_file(name: str) -> Callable[[], Path]:
    def locate() -> Path:
        from nibabel.testing import data_path

        p = Path(data_path) / name
        if not p.is_file():
            raise MedVQAUserError(f"nibabel:{name}", "not in the installed nibabel (needed for the samples)")
        return p

    return locate


def _skimage_file(name: str) -> Callable[[], Path]:
    def locate() -> Path:
        import importlib.util

        spec = importlib.util.find_spec("skimage.data")
        p = Path(spec.origin).parent / name if spec and spec.origin else Path(name)
        if not p.is_file():
            raise MedVQAUserError(
                f"scikit-image:{name}", "not in the installed scikit-image (needed for the samples)"
            )
        return p

    return locate


# ------------------------------------------------------------------------------------------------ cutting ----


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width / height


def _load(path: Path, redact: Sequence[Box] = (), **kw: Any) -> Image.Image:
    """Load through the one loader; paint ``redact`` boxes black (burned-in text of the ultrasound files
    names the patient, the date and the institution: it must not reach the samples)."""
    from PIL import ImageDraw

    from training.images import load_medical_image

    im = load_medical_image(path, **kw)
    if redact:
        draw = ImageDraw.Draw(im)
        w, h = im.size
        for x0, y0, x1, y1 in redact:
            draw.rectangle((round(x0 * w), round(y0 * h), round(x1 * w) - 1, round(y1 * h) - 1), fill=0)
    return im


def _crops(im: Image.Image, boxes: Sequence[Box]) -> Iterator[Image.Image]:
    w, h = im.size
    for x0, y0, x1, y1 in boxes:
        yield im.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))


_FULL_AND_CROPS = [
    (0, 0, 1, 1),
    (0.1, 0.1, 0.9, 0.9),
    (0, 0, 0.8, 0.8),
    (0.2, 0, 1, 0.8),
    (0, 0.2, 0.8, 1),
    (0.2, 0.2, 1, 1),
]


def _windowed(
    boxes: Sequence[Box], windows: Sequence[tuple[float, float] | None] = (None,), redact: Sequence[Box] = ()
):
    """Crops ``boxes`` of the image under each window (None: the file's own window)."""

    def cut(path: Path) -> Iterator[Image.Image]:
        for window in windows:
            yield from _crops(_load(path, redact, window=window), boxes)

    return cut


def _nifti(views: list[tuple[int, list[int], int | None]]):
    """views: (axis, slice indices as fractions*100 of the axis length, frame)."""

    def cut(path: Path) -> Iterator[Image.Image]:
        import nibabel as nib

        shape = nib.load(path).shape
        ornt = nib.orientations.io_orientation(nib.load(path).affine)
        for axis, percents, frame in views:
            n = shape[int(np.flatnonzero(ornt[:3, 0] == axis)[0])]
            for pc in percents:
                yield _load(path, axis=axis, slice_index=min(n - 1, n * pc // 100), frame=frame)

    return cut


def _frames(indices: Sequence[int], redact: Sequence[Box] = ()):
    def cut(path: Path) -> Iterator[Image.Image]:
        for i in indices:
            yield _load(path, redact, frame=i)

    return cut


def _tiles(n: int, size: float, seed: int, channel: Callable[[Image.Image], Image.Image] | None = None):
    """n random square tiles of ``size`` (fraction of the short side); with ``channel`` also that variant."""

    def cut(path: Path) -> Iterator[Image.Image]:
        im = _load(path)
        rng = random.Random(seed)
        w, h = im.size
        side = round(min(w, h) * size)
        for k in range(n):
            x, y = rng.randrange(0, w - side + 1), rng.randrange(0, h - side + 1)
            tile = im.crop((x, y, x + side, y + side))
            yield channel(tile) if channel and k % 2 else tile

    return cut


def _haematoxylin(tile: Image.Image) -> Image.Image:
    """The haematoxylin channel of an IHC tile as a gray image (colour deconvolution, scikit-image)."""
    from skimage.color import rgb2hed

    h = rgb2hed(np.asarray(tile))[..., 0]
    lo, hi = np.percentile(h, (1, 99))
    return Image.fromarray(
        (np.clip((h - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)[..., None].repeat(3, 2)
    )


def _green(tile: Image.Image) -> Image.Image:
    """Red-free fundus view: the green channel, as ophthalmologists use it to see vessels and microaneurysms."""
    g = tile.getchannel("G")
    return Image.merge("RGB", (g, g, g))


def _fundus(path: Path) -> Iterator[Image.Image]:
    im = _load(path)
    views = [im, *(_crops(im, [(0.05, 0.05, 0.95, 0.95), (0, 0.1, 0.85, 0.95), (0.15, 0.05, 1, 0.9)]))]
    views += [im.rotate(a, resample=Image.Resampling.BILINEAR) for a in (15, -15)]
    for k, v in enumerate(views + [v.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for v in views]):
        yield _green(v) if k % 2 else v


def _dihedral(path: Path) -> Iterator[Image.Image]:
    im = _load(path)
    for t in (None, *Image.Transpose.__members__.values()):
        yield im if t is None else im.transpose(t)


_CT_WINDOWS: list[tuple[float, float] | None] = [None, (40, 80), (600, 2800), (50, 350)]

SOURCES: tuple[Source, ...] = (
    Source("pydicom:J2K_pixelrep_mismatch.dcm", "PydicomCT", "CT", "Brain",
           _windowed(_FULL_AND_CROPS, _CT_WINDOWS), _pydicom_file("J2K_pixelrep_mismatch.dcm")),
    Source("pydicom:693_J2KI.dcm", "PydicomCT", "CT", "Brain",
           _windowed(_FULL_AND_CROPS[:5], [(40, 400), (600, 2800)]), _pydicom_file("693_J2KI.dcm")),
    Source("pydicom:CT_small.dcm", "PydicomCT", "CT", "Spine",
           _windowed(_FULL_AND_CROPS[:4], _CT_WINDOWS), _pydicom_file("CT_small.dcm")),
    Source("nibabel:anatomical.nii", "NibabelBrainMRI", "MRI", "Brain",
           _nifti([(2, [30, 38, 46, 54, 62, 70, 78, 86], None), (1, [30, 40, 50, 60, 70, 80], None),
                   (0, [30, 40, 45, 55, 60, 70], None)]), _nibabel_file("anatomical.nii")),
    Source("nibabel:example4d.nii.gz", "NibabelBrainMRI", "MRI", "Brain",
           _nifti([(2, [20, 26, 32, 38, 44, 50, 56, 62, 68, 74, 80], 0), (2, [23, 31, 39, 47, 55, 63, 71, 79, 85], 1)]),
           _nibabel_file("example4d.nii.gz")),
    Source("pydicom:examples_overlay.dcm", "PydicomMR", "MRI", "Abdomen",
           _windowed(_FULL_AND_CROPS[:4], (None, (250, 700))), _pydicom_file("examples_overlay.dcm")),
    Source("pydicom:MR_small.dcm", "PydicomMR", "MRI", None,
           _windowed(_FULL_AND_CROPS[:5]), _pydicom_file("MR_small.dcm")),
    Source("nibabel:functional.nii", "NibabelFunctionalMRI", "MRI", "Brain",
           _nifti([(2, [0, 50, 99], 4), (2, [0, 50, 99], 15)]), _nibabel_file("functional.nii"),
           access="Restricted-access"),
    Source("pydicom:examples_ybr_color.dcm", "PydicomUS", "Ultrasound", "Heart",
           _frames(range(24), redact=[(0, 0, 0.25, 0.12)]), _pydicom_file("examples_ybr_color.dcm")),
    Source("pydicom:examples_jpeg2k.dcm", "PydicomUS", "Ultrasound", "Lymph node",
           _windowed(_FULL_AND_CROPS + [(0.05, 0.1, 0.95, 0.8), (0.1, 0.15, 0.9, 0.75), (0.15, 0.2, 0.85, 0.7),
                                      (0, 0.2, 0.6, 0.8), (0.4, 0.2, 1, 0.8), (0.2, 0.1, 0.8, 0.7),
                                      (0.25, 0.25, 0.75, 0.75), (0.1, 0.3, 0.9, 0.9)], redact=[(0, 0, 1, 0.22)]),
           _pydicom_file("examples_jpeg2k.dcm")),
    Source("pydicom:examples_palette.dcm", "PydicomUS", "Ultrasound", None,
           _windowed(_FULL_AND_CROPS + [(0.25, 0, 0.75, 1), (0.3, 0, 0.8, 0.7)], redact=[(0, 0, 1, 0.18)]), _pydicom_file("examples_palette.dcm")),
    Source("scikit-image:cell.png", "SkimageMicroscopy", "Microscopy", None,
           _tiles(16, 0.45, 11), _skimage_file("cell.png")),
    Source("scikit-image:ihc.png", "SkimageMicroscopy", "Microscopy", None,
           _tiles(24, 0.4, 12, _haematoxylin), _skimage_file("ihc.png")),
    Source("scikit-image:retina.jpg", "SkimageFundus", "Fundus Photography", "Retina",
           _fundus, _skimage_file("retina.jpg")),
    Source("scikit-image:microaneurysms.png", "SkimageFundus", "Fundus Photography", "Retina",
           _dihedral, _skimage_file("microaneurysms.png")),
)  # fmt: skip

# ---------------------------------------------------------------------------------------------- questions ----

MODALITY_OPEN = (
    "What imaging modality is used in this image?",
    "What is the imaging modality of this image?",
    "Which imaging technique was used to acquire this image?",
    "What type of imaging is shown here?",
    "What modality is shown in the picture?",
    "Which of the following imaging modalities was used for this image?",
    "How was this image acquired?",
)
MODALITY_YES_NO = (
    "Is this {a} {m} image?",
    "Was this image acquired with {m}?",
    "Is this image taken by {m}?",
    "Is the modality of this image {m}?",
    "Does this picture come from {m}?",
)
MODALITY_PHRASES = {
    "CT": ("CT", "computed tomography"),
    "MRI": ("MRI", "magnetic resonance imaging"),
    "Ultrasound": ("ultrasound",),
    "Microscopy": ("microscopy",),
    "Fundus Photography": ("fundus photography",),
}
ANATOMY_OPEN = (
    "Which organ is shown in this image?",
    "What part of the body is shown in this image?",
    "Which anatomical region is displayed?",
    "What is the main organ in this image?",
    "Which of the following organs is shown in the image?",
    "Where in the body was this image taken?",
)
ANATOMY_YES_NO = (
    "Is the {o} shown in this image?",
    "Does this image show the {o}?",
    "Is this an image of the {o}?",
)
ANATOMY_DISTRACTORS = (
    "Brain",
    "Spine",
    "Abdomen",
    "Heart",
    "Lymph node",
    "Retina",
    "Liver",
    "Kidney",
    "Knee",
    "Lung",
)
STAIN_OPEN = ("What staining technique is used in this image?", "Which stain was applied to this tissue?")
STAIN_OPTIONS = ("Immunohistochemistry", "Hematoxylin and eosin", "Gram stain", "Giemsa")


def _article(phrase: str) -> str:
    return "an" if phrase[0].lower() in "aeiou" or phrase.startswith("MRI") else "a"


def _options(answer: str, pool: tuple[str, ...], rng: random.Random, k: int = 4) -> list[str]:
    opts = [answer, *rng.sample([p for p in pool if p != answer], k - 1)]
    rng.shuffle(opts)
    return opts


def _row(qid: str, dataset: str, qtype: str, modality: str, question: str, answer: str, options: list[str],
         image_path: str, source: str, rng: random.Random, modality_key: str) -> dict[str, Any]:  # fmt: skip
    row: dict[str, Any] = {
        "question_id": qid,
        "dataset": dataset,
        "question_type": qtype,
        modality_key: RELEASE_MODALITY[modality],
        "question": question,
        # the release writes some answers with a trailing dot; convert cleans them
        "gt_answer": answer + ("." if rng.random() < 0.1 and answer not in ("yes", "no") else ""),
    }
    for letter, opt in zip("ABCD", options):
        row[f"option_{letter}"] = opt
    row["image_path"] = image_path
    row["image_source"] = source  # not in the release: the file this image was cut from
    return row


def _questions(
    src: Source, index: int, rng: random.Random, yes_first: bool
) -> Iterator[tuple[str, str, str, list[str]]]:
    """(question_type, question, answer, options) for one image."""
    m = src.modality
    yield "Modality Recognition", rng.choice(MODALITY_OPEN), m, _options(m, MODALITIES, rng)
    asked = m if (index % 2 == 0) == yes_first else rng.choice([x for x in MODALITIES if x != m])
    phrase = rng.choice(MODALITY_PHRASES[asked])
    q = rng.choice(MODALITY_YES_NO).format(a=_article(phrase), m=phrase)
    yield "Modality Recognition", q, "yes" if asked == m else "no", ["yes", "no"]
    if src.anatomy and index % 3 != 2:
        yield (
            "Anatomy Identification",
            rng.choice(ANATOMY_OPEN),
            src.anatomy,
            _options(src.anatomy, ANATOMY_DISTRACTORS, rng),
        )
    if src.anatomy and index % 3 == 2:
        organ = (
            src.anatomy
            if (index // 3) % 2 == 0
            else rng.choice([a for a in ANATOMY_DISTRACTORS if a != src.anatomy])
        )
        q = rng.choice(ANATOMY_YES_NO).format(o=organ.lower())
        yield "Anatomy Identification", q, "yes" if organ == src.anatomy else "no", ["yes", "no"]
    if src.ref.endswith("ihc.png") and index % 2 == 0:  # colour tiles only: the stain is visible there
        yield (
            "Other Biological Attributes",
            rng.choice(STAIN_OPEN),
            STAIN_OPTIONS[0],
            _options(STAIN_OPTIONS[0], STAIN_OPTIONS, rng),
        )


# ------------------------------------------------------------------------------------------------- build ----


def _shrink(im: Image.Image) -> Image.Image:
    im = im.copy() if max(im.size) <= IMAGE_SIZE else im.resize(_fit(im.size), Image.Resampling.LANCZOS)
    if im.mode == "RGB":
        r, g, b = im.split()
        if r.tobytes() == g.tobytes() == b.tobytes():  # gray: one channel is a third of the file
            return r
    return im


def _fit(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    s = IMAGE_SIZE / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def build_samples(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write the sample set to ``out_dir`` (a new or empty folder, or one an earlier run made); returns ``out_dir``.

    A re-run overwrites the files of the earlier sample set in place and deletes nothing: a folder that merely
    looks like a release (``Images/``, ``QA_information/``) but was not made by this command is refused.

    Raises:
        MedVQAUserError: ``out_dir`` is not a folder this command may write, or a source file is missing.
    """
    out = prepare_output_dir(out_dir, "data samples")
    rng = random.Random(f"medvqa-samples:{seed}")
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    counters: Counter[str] = Counter()
    per_source: dict[str, int] = {}
    for src in SOURCES:
        path = src.locate()
        stem = src.ref.split(":", 1)[1].split(".")[0]
        img_dir = out / "Images" / src.dataset
        img_dir.mkdir(parents=True, exist_ok=True)
        yes_first = rng.random() < 0.5
        modality_key = (
            "modality" if src.dataset == "SkimageFundus" else "modality_type"
        )  # the release's quirk
        n = 0
        for k, im in enumerate(src.cut(path)):
            name = f"{stem}_{k:03d}.png"
            info = PngImagePlugin.PngInfo()
            info.add_text("Source", src.ref)
            _shrink(im).save(img_dir / name, pnginfo=info, optimize=True)
            rel = f"Images/{src.dataset}/{name}"
            for qtype, question, answer, options in _questions(src, k, rng, yes_first):
                counters[src.dataset] += 1
                qid = f"{src.dataset}_{counters[src.dataset]:04d}"
                rows.setdefault((src.access, src.dataset), []).append(
                    _row(
                        qid,
                        src.dataset,
                        qtype,
                        src.modality,
                        question,
                        answer,
                        options,
                        rel,
                        src.ref,
                        rng,
                        modality_key,
                    )
                )
            n += 1
        per_source[src.ref] = n
    for (access, dataset), rs in rows.items():
        qa = out / "QA_information" / access / f"{dataset}.json"
        qa.parent.mkdir(parents=True, exist_ok=True)
        qa.write_text(json.dumps(rs, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_readme(out, rows, per_source)
    return out


def _write_readme(
    out: Path, rows: dict[tuple[str, str], list[dict[str, Any]]], per_source: dict[str, int]
) -> None:
    all_rows = [r for rs in rows.values() for r in rs]
    by_mod = Counter(r.get("modality_type") or r.get("modality") for r in all_rows)
    by_type = Counter(r["question_type"] for r in all_rows)
    lines = [
        "# medvqa-lite sample set",
        "",
        "Built by `medvqa data samples` from real medical images inside installed packages (pydicom, nibabel,",
        "scikit-image test data); see the docstring of `training/data/samples.py`. Layout as the OmniMedVQA release.",
        "DICOM / NIfTI were windowed and written as PNG; no DICOM patient field was copied.",
        "Each QA row names the file its image was cut from in `image_source` (not a release field).",
        "",
        f"{len(all_rows)} questions, {sum(per_source.values())} images, {len(per_source)} source files.",
        "",
        "| source file | images |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in per_source.items()],
        "",
        "| modality string | questions |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in by_mod.most_common()],
        "",
        "| question type | questions |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in by_type.most_common()],
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvqa data samples``."""
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (OmniMedVQA release layout)"
    )
    parser.add_argument(
        "--seed", type=random_seed, default=0, help="seed of question templates and options (default 0)"
    )


def run(args: argparse.Namespace) -> int:
    """``medvqa data samples``: build and print a one-line summary."""
    t0 = time.perf_counter()
    out = build_samples(args.out, seed=args.seed)
    n_q = sum(len(json.loads(p.read_text())) for p in out.glob("QA_information/*/*.json"))
    n_img = sum(1 for _ in out.glob("Images/*/*.png"))
    print(f"{n_q} questions about {n_img} images -> {out} ({time.perf_counter() - t0:.1f} s)")
    return 0
