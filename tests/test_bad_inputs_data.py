"""Issue 10, the input-data half: a table of odd and hostile inputs to the image loader, the JSONL readers, the
release converter and the importers, each run through the real command line (``training.cli.main``).

Every case ends one of two ways, both checked here:

* ``error``: exit status 2 and exactly one line on stderr that names the input and says why;
* ``accept``: exit status 0 and a post-condition (every row accounted for, the hostile row rejected with its
  reason, no record pointing outside the dataset root, the image read as documented).

Cases that could hang (FIFOs) run under ``signal.alarm`` so that a regression fails instead of blocking CI;
the bombs run in a subprocess under a memory limit and a timeout (``benchmarks.bad_inputs``, which also
measures what each refusal costs).  Hypothesis checks that no byte string crashes the JSONL reader and that
every mix of line ends gives back the records and their line numbers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from benchmarks import bad_inputs as bombs
from training.cli import main
from training.data.records import iter_jsonl_numbered
from training.data.safe_files import UnsafeFile, row_path
from training.errors import MedVQAUserError
from training.images import load_medical_image

DCM = Path(pydicom.data.__file__).parent / "test_files"  # local files only: get_testdata_file may download


@contextmanager
def alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging) when the body blocks, e.g. on a FIFO."""

    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------------------------- builders ----


def png(path: Path, size: tuple[int, int] = (32, 32), mode: str = "L", **save: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 90).save(path, **save)
    return path


def png_with_text(path: Path, *, zip_: bool, itxt: bool = False, size: int = 3_000_000) -> Path:
    info = PngImagePlugin.PngInfo()
    if itxt:
        info.add_itxt("Comment", "A" * size, zip=zip_)
    else:
        info.add_text("Comment", "A" * size, zip=zip_)
    return png(path, pnginfo=info)


def png_text_after_idat(path: Path) -> Path:
    """A zTXt bomb placed after the image data: Pillow meets it while decoding, not while opening."""
    png(path)
    data = path.read_bytes()
    end = data.rindex(b"IEND") - 4
    text = b"Comment\0\0" + bombs._zeros_deflated(8 << 20)
    path.write_bytes(data[:end] + bombs._chunk(b"zTXt", text) + data[end:])
    return path


def dicom(path: Path, edit: Callable[[pydicom.Dataset], None], name: str = "CT_small.dcm") -> Path:
    ds = pydicom.dcmread(DCM / name)
    edit(ds)
    ds.save_as(path)
    return path


def dicom_bad_value(path: Path, keyword: str, bad: bytes) -> Path:
    """CT_small with ``keyword`` holding ``bad`` (pydicom refuses to write such a value, so the bytes are patched:
    a valid value of the same length is written first and then overwritten)."""
    good = b"1" * len(bad)
    dicom(path, lambda ds: setattr(ds, keyword, good.decode()))
    data = path.read_bytes()
    tag = pydicom.datadict.tag_for_keyword(keyword)
    at = data.index(struct_tag(tag))
    at = data.index(good, at)
    path.write_bytes(data[:at] + bad + data[at + len(bad) :])
    return path


def dicom_without_meta(path: Path) -> Path:
    """CT_small's data set alone, implicit VR, no preamble and no file meta (an old ACR-NEMA style file)."""
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, pydicom.dcmread(DCM / "CT_small.dcm"))
    path.write_bytes(buf.getvalue())
    return path


def _same_as_ct_small(path: Path) -> None:
    assert (
        np.asarray(load_medical_image(path)) == np.asarray(load_medical_image(DCM / "CT_small.dcm"))
    ).all()


def struct_tag(tag: int) -> bytes:
    return (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")


def lut_item(**fields: Any) -> pydicom.Dataset:
    item = pydicom.Dataset()
    for k, v in fields.items():
        setattr(item, k, v)
    return item


def nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def nifti_corrupt_middle(path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 1000, (64, 64, 64)).astype(np.int16)
    nifti(path, data)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2 + 7] ^= 0xFF  # one flipped byte in the middle of the deflate stream
    path.write_bytes(bytes(raw))
    return path


def tiff(path: Path, array: np.ndarray) -> Path:
    import tifffile

    tifffile.imwrite(path, array)
    return path


def jsonl(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


PRED = b'{"prediction": "yes", "answer": "yes"}'


# --------------------------------------------------------------------------------------------- releases ----


def release(tmp: Path, hostile: dict[str, Callable[[Path], Any] | None], *, ok: bool = True) -> Path:
    """An OmniMedVQA-layout release: one good image and row, plus a row per ``hostile`` image path (the
    callable, when given, creates the file at ROOT/path)."""
    root = tmp / "release"
    rows = []
    paths = (["Images/D/ok.png"] if ok else []) + list(hostile)
    png(root / "Images/D/ok.png", (16, 16), "RGB")
    for path, make in hostile.items():
        if make is not None:
            target = root / path
            target.parent.mkdir(parents=True, exist_ok=True)
            make(target)
    for i, path in enumerate(paths):
        rows.append({"question_id": f"q{i}", "dataset": "D", "question_type": "Modality Recognition",
                     "modality_type": "X-Ray", "question": "What modality is this?", "gt_answer": "X-Ray",
                     "option_A": "X-Ray", "option_B": "CT", "image_path": path})  # fmt: skip
    qa = root / "QA_information/Open-access"
    qa.mkdir(parents=True, exist_ok=True)
    (qa / "D.json").write_text(json.dumps(rows))
    return root


def convert_argv(root: Path, tmp: Path) -> list[str]:
    return ["data", "convert", "--omnimedvqa", str(root), "--out", str(tmp / "out"), "--verify-images"]


def records_of(out: Path) -> list[dict[str, Any]]:
    """The records a later command may read (rejected.jsonl keeps the offending path as the row named it)."""
    recs = []
    for name in ("train", "val", "test", "needs_review"):
        f = out / f"{name}.jsonl"
        if f.exists():
            recs += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return recs


def check_accounted(out: Path, root: Path, reason: str, n_rows: int) -> None:
    """Every row in one bucket, the hostile row rejected with ``reason``, no record pointing outside ROOT."""
    m = json.loads((out / "manifest.json").read_text())
    assert m["input_rows"] == n_rows == m["converted"] + m["needs_review"] + m["rejected"]
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == [reason] and rejected[0]["detail"]
    root_real = root.resolve()
    for rec in records_of(out):
        if rec.get("image"):
            target = (out / rec["image"]).resolve()
            assert target == root_real or root_real in target.parents, rec["image"]


def symlink_out(target: Path) -> Callable[[Path], None]:
    def make(link: Path) -> None:
        png(
            target,
            (16, 16),
            "RGB",
        )
        link.symlink_to(target)

    return make


# ----------------------------------------------------------------------------------------------- imports ----


def parquet_shard(path: Path, rows: list[tuple[str, str, bytes]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({
        "image": [{"bytes": b, "path": None} for _, _, b in rows],
        "question": [q for q, _, _ in rows],
        "answer": [a for _, a, _ in rows],
    })  # fmt: skip
    pq.write_table(table, path, compression="snappy")
    return path


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


def slake(tmp: Path, img_names: list[str], make: dict[str, Callable[[Path], Any]] | None = None) -> Path:
    root = tmp / "slake"
    png(root / "imgs/xmlab1/source.jpg", (16, 16), "RGB", format="JPEG")
    for name, fn in (make or {}).items():
        (root / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        fn(root / "imgs" / name)
    rows = [{"qid": i, "img_name": n, "question": "Which organ is shown?", "answer": "Lung", "q_lang": "en",
             "modality": "CT", "content_type": "Organ", "answer_type": "OPEN"} for i, n in enumerate(img_names)]  # fmt: skip
    (root / "train.json").write_text(json.dumps(rows))
    return root


def pmc(tmp: Path, figures: list[str], *, bom: bool = False) -> Path:
    root = tmp / "pmc"
    png(root / "images/fig1.jpg", (16, 16), "RGB", format="JPEG")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
    )
    for fig in figures:
        w.writerow(
            [fig, "What imaging modality is shown?", "CT", " A:CT", " B:MRI", " C:X-ray", " D:PET", "A"]
        )
    (root / "train.csv").write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")
    return root


def import_argv(fmt: str, path: Path, tmp: Path) -> list[str]:
    return ["data", "import", "--format", fmt, "--path", str(path), "--out", str(tmp / "out")]


def check_import(tmp: Path, *, rows: int, reasons: dict[str, int], converted: int | None = None) -> None:
    """Every row accounted for, rejected exactly for ``reasons``, no record naming /etc/passwd."""
    out = tmp / "out"
    m = json.loads((out / "manifest.json").read_text())
    assert (
        m["input_rows"]
        == rows
        == m["converted"] + m["needs_review"] + m["rejected"] + sum(m["skipped"].values())
    )
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert {r["reason"]: sum(x["reason"] == r["reason"] for x in rejected) for r in rejected} == reasons
    if converted is not None:
        assert m["converted"] == converted
    for rec in records_of(out):
        assert "etc/passwd" not in rec.get("image", "")


def pathvqa_two_shards(tmp: Path) -> list[str]:
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)]
    rows = [(f"Is image {i} stained?", "yes", png_bytes(c)) for i, c in enumerate(colours)]
    parquet_shard(tmp / "pv/data/train-00000-of-00002.parquet", rows[:2])
    parquet_shard(tmp / "pv/data/train-00001-of-00002.parquet", rows[2:])
    return import_argv("pathvqa", tmp / "pv", tmp)


def check_pathvqa_shards(tmp: Path, _out: str) -> None:
    out = tmp / "out"
    recs = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and len({r["question_id"] for r in recs}) == 4
    assert len({r["image"] for r in recs}) == 4 and len(list((out / "images/train").iterdir())) == 4
    colours = {
        f"Is image {i} stained?": c
        for i, c in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0)])
    }
    for r in recs:  # every record still points at its own pixels: no shard overwrote another's image
        assert Image.open(out / r["image"]).convert("RGB").getpixel((0, 0)) == colours[r["question"]]


def corrupt_parquet(tmp: Path) -> tuple[list[str], Path]:
    f = parquet_shard(
        tmp / "vr/train-00000-of-00001.parquet", [(f"q{i}?", "yes", png_bytes((i, 0, 0))) for i in range(50)]
    )
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 3 : len(raw) // 3 + 64] = b"\xff" * 64
    f.write_bytes(bytes(raw))
    return import_argv("vqa-rad", tmp / "vr", tmp), f


# ------------------------------------------------------------------------------------------------ the table ----


@dataclass(frozen=True)
class Case:
    """``setup(tmp, model)`` writes the inputs and returns ``(argv, subject)``; ``subject`` must appear in the
    error line (``error``) or is ignored (``accept``, checked by ``check(tmp, stdout)``)."""

    id: str
    setup: Callable[[Path, Path | None], tuple[list[str], object]]
    reason: str = ""  # regex the error line must match
    check: Callable[[Path, str], None] | None = None
    model: bool = False  # needs the tiny model (medvqa ask)

    @property
    def accept(self) -> bool:
        return self.check is not None


def ask(
    build: Callable[[Path], Path], *extra: str
) -> Callable[[Path, Path | None], tuple[list[str], object]]:
    def setup(tmp: Path, model: Path | None) -> tuple[list[str], object]:
        path = build(tmp)
        argv = ["ask", "--model", str(model), "--image", str(path), "--question", "Which organ?"]
        return [*argv, "--max-new-tokens", "2", *extra], path

    return setup


def score(build: Callable[[Path], Path]) -> Callable[[Path, Path | None], tuple[list[str], object]]:
    def setup(tmp: Path, model: Path | None) -> tuple[list[str], object]:
        path = build(tmp)
        return ["score", "--predictions", str(path), "--out", str(tmp / "out")], path

    return setup


def convert(hostile: dict[str, Callable[[Path], Any] | None], subject: str | None = None, **kw: Any):
    def setup(tmp: Path, model: Path | None) -> tuple[list[str], object]:
        root = release(tmp, hostile, **kw)
        return convert_argv(root, tmp), root / subject if subject else root

    return setup


def converted(reason: str, n_rows: int = 2) -> Callable[[Path, str], None]:
    return lambda tmp, _out: check_accounted(tmp / "out", tmp / "release", reason, n_rows)


def answered(then: Callable[[Path], None] | None = None) -> Callable[[Path, str], None]:
    def check(tmp: Path, out: str) -> None:
        assert re.search(r"^A:", out, re.M), out
        if then:
            then(tmp)

    return check


def scored(n: int) -> Callable[[Path, str], None]:
    return lambda tmp, _out: (
        len((tmp / "out/scored.jsonl").read_text().splitlines()) == n
        or pytest.fail(f"expected {n} scored records")
    )


def gray_of(path: Path) -> np.ndarray:
    return np.asarray(load_medical_image(path))[..., 0]


def _tiff_window_check(tmp: Path) -> None:
    g = gray_of(tmp / "f64.tif")  # float64 gray, windowed like 16-bit: percentiles, a ramp from dark to light
    assert g[0, 0] == 0 and g[-1, -1] == 255 and g[0, 0] < g[5, 5] < g[-1, -1]


def _rgb_nifti_check(tmp: Path) -> None:
    a = np.asarray(load_medical_image(tmp / "rgb.nii"))
    assert a.shape == (9, 8, 3) and (a[..., 0] == 200).all() and (a[..., 1] == 30).all()


def _rgb24(tmp: Path) -> Path:
    rgb = np.zeros((8, 9, 5), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"] = 200, 30
    return nifti(tmp / "rgb.nii", rgb)


def _window_ignored_check(tmp: Path) -> None:
    # a malformed WindowCenter is ignored: the same picture as CT_small without a window (percentiles)
    assert (gray_of(tmp / "wc.dcm") == gray_of(DCM / "CT_small.dcm")).all()


def _mkfifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _link_dev_zero(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


def _dir(path: Path) -> Path:
    path.mkdir()
    return path


def _sparse(size: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(b"\x89PNG\r\n\x1a\n")
            fh.truncate(size)  # a sparse file: no disk used, st_size says > the cap

    return make


def _qa_file(make: Callable[[Path], Any]) -> Callable[[Path, Path | None], tuple[list[str], object]]:
    def setup(tmp: Path, model: Path | None) -> tuple[list[str], object]:
        root = release(tmp, {})
        qa = root / "QA_information/Open-access/Bad.json"
        make(qa)
        return convert_argv(root, tmp), qa

    return setup


def _slake_case(names: list[str], make: dict[str, Callable[[Path], Any]] | None = None):
    def setup(tmp: Path, model: Path | None) -> tuple[list[str], object]:
        return import_argv("slake", slake(tmp, names, make), tmp), tmp / "slake"

    return setup


def _pmc_case(figures: list[str], bom: bool = False):
    def setup(tmp: Path, model: Path | None) -> tuple[list[str], object]:
        return import_argv("pmc-vqa", pmc(tmp, figures, bom=bom), tmp), tmp / "pmc"

    return setup


def _pmc_csv_folder(tmp: Path, model: Path | None) -> tuple[list[str], object]:
    root = pmc(tmp, ["fig1.jpg"])
    (root / "zz_extra.csv").mkdir()
    return import_argv("pmc-vqa", root, tmp), root / "zz_extra.csv"


def _parquet_fifo(tmp: Path, model: Path | None) -> tuple[list[str], object]:
    (tmp / "vr").mkdir()
    f = _mkfifo(tmp / "vr/train-00000-of-00001.parquet")
    return import_argv("vqa-rad", f, tmp), f


def _eval_with_image(tmp: Path, model: Path | None, image: Path) -> tuple[list[str], object]:
    """``medvqa eval`` on one record whose image is ``image``: refused at ``data.jsonl:1`` before the model."""
    rec = {"question_id": "1", "image": image.name, "question": "Which organ?", "answer": "lung"}
    data = jsonl(tmp / "data.jsonl", json.dumps(rec).encode() + b"\n")
    return ["eval", "--model", str(model), "--data", str(data), "--out", str(tmp / "out")], f"{data}:1"


def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


OUTSIDE = "outside.png"  # written next to the release, reached through a symlink inside it

CASES: list[Case] = [
    # ---- images, through medvqa ask (the loader runs before the model does anything)
    Case("image-missing", ask(lambda t: t / "nope.png"), "no such file", model=True),
    Case("image-directory", ask(lambda t: _dir(t / "folder.png")), "is a directory", model=True),
    Case("image-fifo", ask(lambda t: _mkfifo(t / "fifo.png")), "not a regular file", model=True),
    Case(
        "image-symlink-dev-zero",
        ask(lambda t: _link_dev_zero(t / "zero.png")),
        "not a regular file",
        model=True,
    ),
    Case("image-empty", ask(lambda t: jsonl(t / "empty.png", b"")), "empty file", model=True),
    Case(
        "image-text-as-png",
        ask(lambda t: jsonl(t / "t.png", b"hello, not an image\n")),
        "holds text",
        model=True,
    ),
    Case(
        "image-truncated-png",
        ask(lambda t: jsonl(t / "half.png", png(t / "full.png", (64, 64)).read_bytes()[:60])),
        "truncated|damaged|unreadable",
        model=True,
    ),  # fmt: skip
    Case(
        "image-huge-dimension-png",
        ask(lambda t: (bombs.huge_dimension_png(t / "h.png"), t / "h.png")[1]),
        "decompression bomb",
        model=True,
    ),  # fmt: skip
    Case(
        "image-decompression-bomb-no-warning",
        ask(lambda t: (bombs.decompression_bomb_png(t / "b.png"), t / "b.png")[1]),
        "decompression bomb",
        model=True,
    ),  # fmt: skip
    Case(
        "image-strip-1x100000",
        ask(lambda t: (bombs.strip_png(t / "s.png"), t / "s.png")[1]),
        "aspect ratio",
        model=True,
    ),
    Case("image-strip-21-to-1", ask(lambda t: png(t / "s21.png", (21, 1))), "aspect ratio", model=True),
    Case(
        "image-strip-20-to-1-accepted",
        ask(lambda t: png(t / "s20.png", (400, 20))),
        check=answered(),
        model=True,
    ),
    Case("image-ztxt-bomb", ask(lambda t: png_with_text(t / "z.png", zip_=True)), "text chunk", model=True),
    Case(
        "image-itxt-bomb",
        ask(lambda t: png_with_text(t / "i.png", zip_=True, itxt=True)),
        "text chunk",
        model=True,
    ),
    Case(
        "image-ztxt-after-idat", ask(lambda t: png_text_after_idat(t / "late.png")), "text chunk", model=True
    ),
    Case(
        "image-plain-text-3mb-accepted",
        ask(lambda t: png_with_text(t / "plain.png", zip_=False)),
        check=answered(),
        model=True,
    ),  # fmt: skip
    Case(
        "image-axis-on-png", ask(lambda t: png(t / "a.png"), "--axis", "1"), "only apply to NIfTI", model=True
    ),
    Case(
        "image-slice-on-png",
        ask(lambda t: png(t / "a.png"), "--slice", "3"),
        "only apply to NIfTI",
        model=True,
    ),
    Case(
        "image-frame-on-single-png",
        ask(lambda t: png(t / "a.png"), "--frame", "5"),
        "frame 5 out of range",
        model=True,
    ),
    Case(
        "image-float64-tiff-accepted",
        ask(lambda t: tiff(t / "f64.tif", np.linspace(-5.0, 5.0, 100).reshape(10, 10))),
        check=answered(_tiff_window_check),
        model=True,
    ),  # fmt: skip
    Case(
        "image-float16-tiff-accepted",
        ask(lambda t: tiff(t / "f16.tif", np.linspace(0, 1, 100, dtype=np.float16).reshape(10, 10))),
        check=answered(),
        model=True,
    ),  # fmt: skip
    Case(
        "image-complex-tiff",
        ask(lambda t: tiff(t / "c.tif", np.ones((10, 10), np.complex64))),
        "complex-valued",
        model=True,
    ),
    Case(
        "image-nul-in-path",
        lambda t, m: (["ask", "--model", str(m), "--image", "a\0b.png", "--question", "q"], r"a\x00b.png"),
        "NUL byte",
        model=True,
    ),  # fmt: skip
    Case(
        "eval-record-image-is-a-directory",
        lambda t, m: _eval_with_image(t, m, _dir(t / "scan.png")),
        "is a directory",
        model=True,
    ),  # fmt: skip
    Case(
        "eval-record-image-is-a-fifo",
        lambda t, m: _eval_with_image(t, m, _mkfifo(t / "scan.png")),
        "not a regular file",
        model=True,
    ),  # fmt: skip
    # ---- DICOM
    Case(
        "dicom-no-bits-allocated",
        ask(lambda t: dicom(t / "nb.dcm", lambda ds: delattr(ds, "BitsAllocated"))),
        "missing BitsAllocated",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-no-rows",
        ask(lambda t: dicom(t / "nr.dcm", lambda ds: delattr(ds, "Rows"))),
        "missing Rows",
        model=True,
    ),
    Case(
        "dicom-no-photometric",
        ask(lambda t: dicom(t / "np.dcm", lambda ds: delattr(ds, "PhotometricInterpretation"))),
        "missing PhotometricInterpretation",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-palette-without-lut",
        ask(
            lambda t: dicom(
                t / "pal.dcm", lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR")
            )
        ),
        "PALETTE COLOR image without its palette",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-modality-lut-without-data",
        ask(
            lambda t: dicom(
                t / "ml.dcm",
                lambda ds: setattr(
                    ds,
                    "ModalityLUTSequence",
                    pydicom.Sequence([lut_item(LUTDescriptor=[256, 0, 16], ModalityLUTType="HU")]),
                ),
            )
        ),
        "Modality LUT without its table: missing LUTData",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-voi-lut-without-data",
        ask(
            lambda t: dicom(
                t / "vl.dcm",
                lambda ds: setattr(
                    ds, "VOILUTSequence", pydicom.Sequence([lut_item(LUTDescriptor=[256, 0, 16])])
                ),
            )
        ),
        "VOI LUT without its table: missing LUTData",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-rescale-slope-word",
        ask(lambda t: dicom_bad_value(t / "sl.dcm", "RescaleSlope", b"slope")),
        "RescaleSlope is not a number",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-rescale-intercept-word",
        ask(lambda t: dicom_bad_value(t / "ri.dcm", "RescaleIntercept", b"inter")),
        "RescaleIntercept is not a number",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-number-of-frames-word",
        ask(lambda t: dicom_bad_value(t / "nf.dcm", "NumberOfFrames", b"xx")),
        "NumberOfFrames is not a number",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-window-centre-word-accepted",
        ask(lambda t: dicom_bad_value(t / "wc.dcm", "WindowCenter", b"abcde")),
        check=answered(_window_ignored_check),
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-bits-allocated-7",
        ask(lambda t: dicom(t / "b7.dcm", lambda ds: setattr(ds, "BitsAllocated", 7))),
        "Bits Allocated",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-colour-without-planar-configuration",
        ask(lambda t: dicom(t / "spp.dcm", lambda ds: setattr(ds, "SamplesPerPixel", 3))),
        "missing PlanarConfiguration",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-empty-pixel-data",
        ask(lambda t: dicom(t / "e.dcm", lambda ds: setattr(ds, "PixelData", b""))),
        "no pixel data",
        model=True,
    ),  # fmt: skip
    Case(
        "dicom-acr-nema-without-file-meta-accepted",
        ask(lambda t: dicom_without_meta(t / "acr.dcm")),
        check=answered(lambda t: _same_as_ct_small(t / "acr.dcm")),
        model=True,
    ),  # fmt: skip
    Case("dicom-axis-option", ask(lambda t: DCM / "CT_small.dcm", "--axis", "0"), "use frame", model=True),
    Case(
        "dicom-truncated",
        ask(lambda t: jsonl(t / "half.dcm", (DCM / "CT_small.dcm").read_bytes()[:20000])),
        "truncated",
        model=True,
    ),  # fmt: skip
    # ---- NIfTI
    Case(
        "nifti-complex64",
        ask(lambda t: nifti(t / "c.nii", np.ones((8, 9, 5), np.complex64))),
        "complex-valued",
        model=True,
    ),  # fmt: skip
    Case("nifti-rgb24-accepted", ask(_rgb24), check=answered(_rgb_nifti_check), model=True),
    Case(
        "nifti-gz-corrupt-in-the-middle",
        ask(lambda t: nifti_corrupt_middle(t / "v.nii.gz")),
        "gzip stream",
        model=True,
    ),
    Case(
        "nifti-gz-truncated",
        ask(
            lambda t: jsonl(
                t / "t.nii.gz", nifti(t / "f.nii.gz", np.ones((30, 30, 30), np.int16)).read_bytes()[:300]
            )
        ),
        "gzip stream",
        model=True,
    ),  # fmt: skip
    Case(
        "nifti-gz-bomb-declared",
        ask(lambda t: (bombs._gzip_nifti(t / "b.nii.gz", (2048, 2048, 2048), 1 << 20), t / "b.nii.gz")[1]),
        "more than the cap",
        model=True,
    ),  # fmt: skip
    Case(
        "nifti-gz-overlong-stream",
        ask(lambda t: (bombs._gzip_nifti(t / "l.nii.gz", (8, 8, 8), 16 << 20), t / "l.nii.gz")[1]),
        "more than the .* bytes its NIfTI header",
        model=True,
    ),  # fmt: skip
    Case(
        "nifti-empty-dimension",
        ask(lambda t: nifti(t / "z.nii", np.zeros((8, 0, 5), np.int16))),
        "empty dimension",
        model=True,
    ),
    Case(
        "nifti-slice-out-of-range",
        ask(lambda t: nifti(t / "s.nii", np.ones((8, 9, 5), np.int16)), "--slice", "99"),
        "slice 99 out of range",
        model=True,
    ),  # fmt: skip
    Case(
        "nifti-2d-with-slice",
        ask(lambda t: nifti(t / "flat.nii", np.ones((8, 9), np.int16)), "--slice", "1"),
        "single 2-D image",
        model=True,
    ),  # fmt: skip
    # ---- records, through medvqa score
    Case(
        "records-cr-line-ends-accepted",
        score(lambda t: jsonl(t / "p.jsonl", b"\r".join([PRED] * 5))),
        check=scored(5),
    ),
    Case(
        "records-crlf-accepted",
        score(lambda t: jsonl(t / "p.jsonl", b"\r\n".join([PRED] * 5) + b"\r\n")),
        check=scored(5),
    ),
    Case(
        "records-bom-accepted",
        score(lambda t: jsonl(t / "p.jsonl", b"\xef\xbb\xbf" + b"\n".join([PRED] * 3))),
        check=scored(3),
    ),
    Case(
        "records-deep-nesting",
        score(lambda t: jsonl(t / "p.jsonl", PRED + b"\n" + b'{"a": ' + _deep(100_000) + b"}\n")),
        r"p\.jsonl:2: JSON nested too deeply",
    ),  # fmt: skip
    Case(
        "records-5000-digit-integer",
        score(lambda t: jsonl(t / "p.jsonl", b'{"a": ' + b"9" * 5000 + b"}\n")),
        r"p\.jsonl:1: an integer of more than",
    ),  # fmt: skip
    Case(
        "records-invalid-utf8",
        score(lambda t: jsonl(t / "p.jsonl", PRED + b"\n\n" + b'{"prediction": "\xff"}\n')),
        r"p\.jsonl:3: not UTF-8",
    ),  # fmt: skip
    Case(
        "records-nul-byte",
        score(lambda t: jsonl(t / "p.jsonl", PRED + b"\r\x00\n")),
        r"p\.jsonl:2: malformed JSON",
    ),
    Case(
        "records-lone-surrogate",
        score(lambda t: jsonl(t / "p.jsonl", b'{"prediction": "\\ud800", "answer": "a"}\n')),
        r"p\.jsonl:1: .*lone surrogate",
    ),  # fmt: skip
    Case(
        "records-error-line-after-cr-lines",
        score(lambda t: jsonl(t / "p.jsonl", PRED + b"\r" + PRED + b"\r\r[1]\r")),
        r"p\.jsonl:4: expected a JSON object",
    ),  # fmt: skip
    Case("records-directory", score(lambda t: _dir(t / "p.jsonl")), "is a directory"),
    Case("records-fifo", score(lambda t: _mkfifo(t / "p.jsonl")), "not a regular file"),
    # ---- dataset roots, through medvqa data convert
    Case("release-fifo-image", convert({"Images/D/fifo.png": _mkfifo}), check=converted("unreadable_image")),
    Case(
        "release-dev-zero-symlink",
        convert({"Images/D/zero.png": _link_dev_zero}),
        check=converted("image_outside_root"),
    ),
    Case(
        "release-symlink-out-of-root",
        lambda t, m: convert({"Images/D/link.png": symlink_out(t / OUTSIDE)})(t, m),
        check=converted("image_outside_root"),
    ),  # fmt: skip
    Case("release-dotdot-passwd", convert({"../../../etc/passwd": None}), check=converted("malformed_row")),
    Case("release-absolute-path", convert({"/etc/passwd": None}), check=converted("malformed_row")),
    Case("release-nul-in-image-path", convert({"Images/D/a\0.png": None}), check=converted("malformed_row")),
    Case(
        "release-directory-as-image", convert({"Images/D/dir.png": _dir}), check=converted("unreadable_image")
    ),
    Case(
        "release-image-over-byte-cap",
        convert({"Images/D/huge.png": _sparse((1 << 30) + 1)}),
        check=converted("unreadable_image"),
    ),  # fmt: skip
    Case(
        "release-symlink-inside-root-accepted",
        convert({"Images/D/alias.png": lambda p: p.symlink_to(p.parent / "ok.png")}),
        check=lambda t, o: check_accounted_converted(t, 2),
    ),  # fmt: skip
    Case("release-qa-file-fifo", _qa_file(_mkfifo), "not a regular file"),
    Case(
        "release-qa-file-symlink-out",
        _qa_file(lambda p: p.symlink_to(png(p.parents[3] / "x.json", format="PNG"))),
        "outside the dataset root",
    ),  # fmt: skip
    Case(
        "release-qa-file-deep-nesting", _qa_file(lambda p: p.write_bytes(_deep(100_000))), "nested too deeply"
    ),
    Case(
        "release-qa-file-5000-digits",
        _qa_file(lambda p: p.write_bytes(b"[" + b"7" * 5000 + b"]")),
        "malformed QA file",
    ),
    # ---- importers
    Case(
        "pathvqa-two-shards-of-one-split", lambda t, m: (pathvqa_two_shards(t), t), check=check_pathvqa_shards
    ),
    Case("parquet-corrupt-page", lambda t, m: corrupt_parquet(t), "corrupt parquet data"),
    Case("parquet-fifo", _parquet_fifo, "not a regular file"),
    Case(
        "pmc-csv-with-bom-accepted",
        _pmc_case(["fig1.jpg"], bom=True),
        check=lambda t, o: check_import(t, rows=1, reasons={}),
    ),  # fmt: skip
    Case("pmc-folder-named-csv", _pmc_csv_folder, "is a directory"),
    Case(
        "pmc-figure-path-traversal",
        _pmc_case(["fig1.jpg", "../../../etc/passwd"]),
        check=lambda t, o: check_import(t, rows=2, reasons={"malformed_row": 1}),
    ),  # fmt: skip
    Case(
        "slake-img-name-traversal",
        _slake_case(["xmlab1/source.jpg", "../../../etc/passwd"]),
        check=lambda t, o: check_import(t, rows=2, reasons={"malformed_row": 1}, converted=1),
    ),  # fmt: skip
    Case(
        "slake-absolute-img-name",
        _slake_case(["xmlab1/source.jpg", "/etc/passwd"]),
        check=lambda t, o: check_import(t, rows=2, reasons={"malformed_row": 1}, converted=1),
    ),  # fmt: skip
    Case(
        "slake-symlink-out-of-root",
        lambda t, m: _slake_case(
            ["xmlab1/source.jpg", "xmlab2/l.png"], {"xmlab2/l.png": symlink_out(t / OUTSIDE)}
        )(t, m),
        check=lambda t, o: check_import(t, rows=2, reasons={"image_outside_root": 1}, converted=1),
    ),  # fmt: skip
    Case(
        "slake-fifo-image",
        _slake_case(["xmlab1/source.jpg", "xmlab3/f.png"], {"xmlab3/f.png": _mkfifo}),
        check=lambda t, o: check_import(t, rows=2, reasons={"unreadable_image": 1}, converted=1),
    ),  # fmt: skip
    Case(
        "slake-deep-json",
        lambda t, m: (
            import_argv(
                "slake", (lambda r: ((r / "train.json").write_bytes(_deep(100_000)), r)[1])(slake(t, [])), t
            ),
            t / "slake" / "train.json",
        ),
        "nested too deeply",
    ),  # fmt: skip
]


def check_accounted_converted(tmp: Path, n_rows: int) -> None:
    m = json.loads((tmp / "out/manifest.json").read_text())
    assert m["input_rows"] == n_rows == m["converted"] and m["rejected"] == 0


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest
) -> None:
    model = request.getfixturevalue("tiny_model_dir") if case.model else None
    argv, subject = case.setup(tmp_path, model)
    capsys.readouterr()
    with alarm(60):
        code = main(argv)
    captured = capsys.readouterr()
    if case.accept:
        assert code == 0, captured.err
        assert case.check is not None
        case.check(tmp_path, captured.out)
        return
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err  # one line: no warning, no progress bar, no traceback before it
    assert str(subject) in lines[0] and re.search(case.reason, lines[0]), lines[0]


def test_the_table_is_large_enough() -> None:
    assert len(CASES) + len(bombs.BOMBS) >= 55
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------- bombs, in a subprocess ----


@pytest.mark.parametrize("name", list(bombs.BOMBS))
def test_bomb_is_refused_without_memory_or_hang(name: str, tmp_path: Path) -> None:
    bomb = bombs.BOMBS[name]
    run, rejected = bombs.run_bomb(bomb, tmp_path, timeout=120)
    assert run.returncode == 0, run.stderr  # None would be a hang, killed at the timeout
    assert [r["reason"] for r in rejected] == [bomb.reason, bomb.reason]  # both questions on the image
    assert run.stderr.strip() == ""  # no Pillow / nibabel warning lines either
    # a refusal costs no more than an ordinary conversion's order of memory (the bombs would need GBs)
    assert run.peak_rss_mib < 1024


def test_benchmark_script_runs_one_case(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = bombs.run_child([sys.executable, "-m", "benchmarks.bad_inputs", "--cases", "fifo_in_release",
                           "--repeats", "1", "--json", str(out)], timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "fifo_in_release" in run.stdout and "x " in run.stdout  # printed as ratios to the reference
    report = json.loads(out.read_text())
    assert report["fifo_in_release"]["refused"] is True
    assert report["fifo_in_release"]["rss_ratio"] > 0 and report["reference"]["peak_rss_mib"] > 0


# ------------------------------------------------------------------------------------ property-based ----


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_no_byte_string_crashes_the_jsonl_reader(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "any.jsonl"
    path.write_bytes(data)
    try:
        pairs = list(iter_jsonl_numbered(path))
    except MedVQAUserError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return
    numbers = [n for n, _ in pairs]
    assert numbers == sorted(set(numbers)) and all(isinstance(o, dict) for _, o in pairs)
    assert len(pairs) <= len(re.split(rb"\r\n|\r|\n", data))


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(st.dictionaries(st.text(max_size=6), _json_values, max_size=4), max_size=6),
    ends=st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=4),
    blanks=st.lists(st.integers(0, 2), min_size=1, max_size=4),
)
def test_every_mix_of_line_ends_gives_back_the_records_and_their_lines(
    tmp_path: Path, records: list[dict[str, Any]], ends: list[str], blanks: list[int]
) -> None:
    text, expected, line = "", [], 1

    def line_end(end: str) -> str:
        # a CR followed by a LF would be one CRLF: write that CRLF as the next end, so each end counts once
        return "\r\n" if text.endswith("\r") and end == "\n" else end

    for i, rec in enumerate(records):
        end = ends[i % len(ends)]
        for _ in range(blanks[i % len(blanks)]):
            text += line_end(end)
            line += 1
        text += json.dumps(rec)
        text += line_end(end)
        expected.append((line, rec))
        line += 1
    path = tmp_path / "r.jsonl"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        got = list(iter_jsonl_numbered(path))
    except MedVQAUserError as exc:  # only a lone surrogate that json.dumps escaped may be refused
        assert "surrogate" in str(exc)
        return
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(name=st.text(alphabet=st.sampled_from(list("ab./\\\0 ")), max_size=20))
def test_a_row_path_never_leaves_the_root(name: str) -> None:
    try:
        key = row_path(name)
    except UnsafeFile as exc:
        assert exc.reason == "malformed_row"
        return
    assert "\0" not in key and not key.startswith("/") and ".." not in key.split("/")
    root = Path("/r")
    assert (root / key).resolve() != root and root in (root / key).resolve().parents


if sys.platform != "linux":  # FIFOs, /dev/zero and os.wait4 rusage are what this file is about
    pytestmark = pytest.mark.skip(reason="Linux only")
