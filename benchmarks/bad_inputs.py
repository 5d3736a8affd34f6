"""What refusing a bomb costs: peak memory and time of ``medvqa data convert --verify-images`` on a release whose
one image is hostile, beside the same command on the same release with a normal image, measured in the same run.

    python -m benchmarks.bad_inputs                      # every bomb
    python -m benchmarks.bad_inputs --cases fifo_in_release --json out.json

Each run is a fresh subprocess; its peak RSS comes from ``os.wait4`` (the kernel's ``ru_maxrss`` of that one
child) and its wall time from the parent.  A child runs under an 8 GiB address-space limit and a timeout, so a
regression (a FIFO that blocks, ``/dev/zero`` read to the end) fails the run instead of the machine.  The
figures are printed as ratios to the reference; the absolute numbers are printed beside them for the record.

The builders are also used by ``tests/test_bad_inputs_data.py``, which checks each refusal (not its cost).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADDRESS_SPACE_LIMIT = 8 << 30


# ------------------------------------------------------------------------------------------- the bombs ----


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png(width: int, height: int, idat: bytes, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _zeros_deflated(n: int, level: int = 9) -> bytes:
    """``n`` zero bytes deflated, compressed in 16 MiB pieces so that building a bomb stays small too."""
    comp, out, piece = zlib.compressobj(level), [], b"\0" * (16 << 20)
    while n > 0:
        out.append(comp.compress(piece[: min(n, len(piece))]))
        n -= len(piece)
    out.append(comp.flush())
    return b"".join(out)


def huge_dimension_png(path: Path) -> None:
    """A header claiming 100 000 x 100 000 pixels (10 G) over a few bytes of data: Pillow's own limit."""
    path.write_bytes(_png(100_000, 100_000, zlib.compress(b"\0" * 64)))


def decompression_bomb_png(path: Path) -> None:
    """12 000 x 12 000 real zero pixels (144 M, over our 100 M cap, between Pillow's warning and error) in
    ~150 kB: decoding it would take 144 MB as gray and 432 MB as RGB."""
    side = 12_000
    path.write_bytes(_png(side, side, _zeros_deflated((side + 1) * side)))


def ztxt_bomb_png(path: Path) -> None:
    """A 64 x 64 PNG with a zTXt chunk that inflates to 64 MiB."""
    text = b"Comment\0\0" + _zeros_deflated(64 << 20)
    path.write_bytes(_png(64, 64, zlib.compress(b"\0" * (65 * 64)), _chunk(b"zTXt", text)))


def strip_png(path: Path) -> None:
    """A 1 x 100 000 strip: few pixels, but resizing its short side to 224 px would need 224 x 22.4 M."""
    path.write_bytes(_png(100_000, 1, zlib.compress(b"\0" + b"\x80" * 100_000)))


def _nifti_header(shape: tuple[int, ...], datatype: int = 4, bitpix: int = 16) -> bytes:
    """A NIfTI-1 single-file header (``n+1``), data at offset 352; datatype 4 = int16."""
    import nibabel as nib
    import numpy as np

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16 if datatype == 4 else np.uint8)
    hdr.set_data_shape(shape)
    hdr["vox_offset"] = 352
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    return hdr.binaryblock + b"\0\0\0\0"  # the 4-byte extension flag: no extensions


def gzip_bomb_nifti(path: Path) -> None:
    """A .nii.gz whose header declares 2048^3 int16 voxels (16 GiB), over the 2 GiB volume cap, with 256 MiB of
    zeros behind it (a 250 kB file)."""
    _gzip_nifti(path, (2048, 2048, 2048), 256 << 20)


def gzip_overlong_nifti(path: Path) -> None:
    """A .nii.gz with a small header (32^3 int16, 64 KiB) and 256 MiB of zeros behind it: the stream must not be
    inflated past what the header accounts for."""
    _gzip_nifti(path, (32, 32, 32), 256 << 20)


def _gzip_nifti(path: Path, shape: tuple[int, ...], payload: int) -> None:
    with gzip.open(path, "wb", compresslevel=6) as fh:
        fh.write(_nifti_header(shape))
        piece = b"\0" * (16 << 20)
        for _ in range(payload // len(piece)):
            fh.write(piece)


def dev_zero_symlink(path: Path) -> None:
    """The image is a symlink to /dev/zero: a read to the end never ends."""
    path.symlink_to("/dev/zero")


def fifo(path: Path) -> None:
    """The image is a FIFO with no writer: opening it for reading blocks forever."""
    os.mkfifo(path)


def normal_png(path: Path) -> None:
    """The reference: a 512 x 512 8-bit gray PNG of noise, a typical radiograph thumbnail."""
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512), dtype=np.uint8)).save(path)


@dataclass(frozen=True)
class Bomb:
    name: str
    filename: str
    build: Callable[[Path], None]
    reason: str  # the rejected.jsonl reason the row must get


BOMBS: dict[str, Bomb] = {
    b.name: b
    for b in (
        Bomb("huge_dimension_png", "huge.png", huge_dimension_png, "unreadable_image"),
        Bomb("decompression_bomb_png", "bomb.png", decompression_bomb_png, "unreadable_image"),
        Bomb("ztxt_bomb_png", "ztxt.png", ztxt_bomb_png, "unreadable_image"),
        Bomb("strip_1x100000_png", "strip.png", strip_png, "unreadable_image"),
        Bomb("gzip_bomb_nifti", "bomb.nii.gz", gzip_bomb_nifti, "unreadable_image"),
        Bomb("gzip_overlong_nifti", "long.nii.gz", gzip_overlong_nifti, "unreadable_image"),
        Bomb("dev_zero_symlink_in_release", "zero.png", dev_zero_symlink, "image_outside_root"),
        Bomb("fifo_in_release", "fifo.png", fifo, "unreadable_image"),
    )
}
REFERENCE = Bomb("reference_normal_png", "normal.png", normal_png, "")


def write_release(root: Path, bomb: Bomb) -> Path:
    """An OmniMedVQA-layout release with one dataset, one image (built by ``bomb``) and two questions on it."""
    images = root / "Images" / "Bench"
    images.mkdir(parents=True)
    bomb.build(images / bomb.filename)
    rows = [
        {"question_id": f"b{i}", "dataset": "Bench", "question_type": "Modality Recognition",
         "modality_type": "X-Ray", "question": q, "gt_answer": a, "option_A": "X-Ray", "option_B": "CT",
         "image_path": f"Images/Bench/{bomb.filename}"}
        for i, (q, a) in enumerate((("What modality is this?", "X-Ray"), ("Is this a CT?", "no")))
    ]  # fmt: skip
    qa = root / "QA_information" / "Open-access"
    qa.mkdir(parents=True)
    (qa / "Bench.json").write_text(json.dumps(rows))
    return root


# ---------------------------------------------------------------------------------------------- running ----


@dataclass
class Run:
    returncode: int | None  # None: killed at the timeout
    peak_rss_mib: float
    seconds: float
    stdout: str
    stderr: str


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_child(argv: list[str], timeout: float = 120.0) -> Run:
    """Run ``argv`` in a fresh process; its own peak RSS (``os.wait4``), wall time and output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT, preexec_fn=_limit_memory)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # rusage of this one child, not of all children
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: tell Popen so it does not wait
        out.seek(0)
        err.seek(0)
        return Run(
            None if killed.is_set() else proc.returncode,
            usage.ru_maxrss / 1024,  # KiB on Linux
            seconds,
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
        )


def convert_command(root: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "training.cli", "data", "convert", "--omnimedvqa", str(root), "--out", str(out),
            "--verify-images"]  # fmt: skip


def run_bomb(bomb: Bomb, work: Path, timeout: float = 120.0) -> tuple[Run, list[dict]]:
    """Build the release for ``bomb`` under ``work``, convert it; the run and the rows of rejected.jsonl."""
    root = write_release(work / f"{bomb.name}-release", bomb)
    out = work / f"{bomb.name}-out"
    run = run_child(convert_command(root, out), timeout)
    rejected_file = out / "rejected.jsonl"
    rejected = (
        [json.loads(line) for line in rejected_file.read_text().splitlines()]
        if rejected_file.exists()
        else []
    )
    return run, rejected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(BOMBS), help="comma-separated bomb names (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the reference (median taken)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as a hang")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    names = [n for n in args.cases.split(",") if n]
    unknown = sorted(set(names) - set(BOMBS))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(BOMBS)}")
    with tempfile.TemporaryDirectory(prefix="medvqa-bad-inputs-") as tmp:
        work = Path(tmp)
        refs = [run_bomb(REFERENCE, work / f"ref{i}", args.timeout)[0] for i in range(max(1, args.repeats))]
        for r in refs:
            if r.returncode != 0:
                print(f"reference run failed ({r.returncode}): {r.stderr.strip()[-500:]}", file=sys.stderr)
                return 1
        ref_rss = statistics.median(r.peak_rss_mib for r in refs)
        ref_s = statistics.median(r.seconds for r in refs)
        print(
            f"reference ({REFERENCE.name}): peak RSS {ref_rss:.0f} MiB, {ref_s:.2f} s (median of {len(refs)})"
        )
        print(f"{'case':<30} {'RSS/ref':>8} {'time/ref':>9} {'peak RSS':>10} {'time':>8}  outcome")
        report: dict[str, dict] = {"reference": {"peak_rss_mib": ref_rss, "seconds": ref_s}}
        failed = False
        for name in names:
            bomb = BOMBS[name]
            run, rejected = run_bomb(bomb, work, args.timeout)
            refused = run.returncode == 0 and any(r.get("reason") == bomb.reason for r in rejected)
            if run.returncode is None:
                outcome = f"HANG (killed after {args.timeout:.0f} s)"
            elif refused:
                outcome = f"refused: {rejected[0]['reason']}: {rejected[0].get('detail', '')}"
            else:
                outcome = f"NOT REFUSED (exit {run.returncode}) {run.stderr.strip()[-300:]}"
            failed |= not refused
            rss_ratio, time_ratio = run.peak_rss_mib / ref_rss, run.seconds / ref_s
            print(
                f"{name:<30} {rss_ratio:>7.2f}x {time_ratio:>8.2f}x {run.peak_rss_mib:>6.0f} MiB "
                f"{run.seconds:>6.2f} s  {outcome[:140]}"
            )
            report[name] = {
                **asdict(run),
                "rss_ratio": rss_ratio,
                "time_ratio": time_ratio,
                "refused": refused,
            }
            report[name].pop("stdout")
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
