"""What the web app costs on top of ``medvqa ask``: start-up, first streamed text and whole answer, as ratios.

    python -m benchmarks.app_latency                                  # the demo's model (demo-out/model)
    python -m benchmarks.app_latency --model DIR --repeats 7 --json out.json

Each figure is set beside a reference measured in the same run, on the same model, image and questions:

* start-up: ``medvqa app`` from process start until the page answers HTTP 200, beside a fresh ``medvqa ask``
  process answering one question (load, answer, exit) — the command a user would run instead;
* first streamed text: ``/answer`` through ``gradio_client`` until the first partial answer arrives (upload,
  queue, load, one encoding cached across questions, generation up to the first word), beside ``medvqa ask``'s
  in-process path generating one token (``answer_questions(..., max_new_tokens=1)``);
* whole answer: ``/answer`` until the last value, beside ``answer_questions`` in-process with the same
  ``max_new_tokens``.

Latencies are medians over ``--repeats`` rounds, app and reference alternating; start-ups over ``--startups``
rounds.  The absolute seconds are printed beside the ratios for the record.  The server binds 127.0.0.1 on a
free port and nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ("What imaging modality is used in this image?", "Which organ is shown in this image?")
START_TIMEOUT_S = 300


def _env(cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(cache),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(model: str, work: Path, max_new_tokens: int) -> tuple[subprocess.Popen, str, float]:
    """``medvqa app`` on a free port; returns (process, url, seconds until the page answered 200)."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    command = [sys.executable, "-m", "training.cli", "app", "--model", model, "--port", str(port)]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--max-new-tokens", str(max_new_tokens)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(work / "gradio-cache"),
        cwd=work,
    )
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"medvqa app exited with {process.returncode}")
        if time.perf_counter() - started > START_TIMEOUT_S:
            process.kill()
            raise RuntimeError(f"medvqa app did not answer within {START_TIMEOUT_S} s")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return process, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.1)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def ask_process_seconds(model: str, image: Path, work: Path, max_new_tokens: int) -> float:
    """Wall seconds of a fresh ``medvqa ask`` process answering one question."""
    command = [sys.executable, "-m", "training.cli", "ask", "--model", model, "--image", str(image)]
    started = time.perf_counter()
    subprocess.run(
        [*command, "--question", QUESTIONS[0], "--max-new-tokens", str(max_new_tokens)],
        env=_env(work / "gradio-cache"),
        cwd=work,
        check=True,
        capture_output=True,
        timeout=START_TIMEOUT_S,
    )
    return time.perf_counter() - started


def client_latency(client, image: Path, question: str) -> tuple[float, float, str]:
    """(seconds to the first partial answer, seconds to the whole answer, the answer) of one ``/answer`` call."""
    from gradio_client import handle_file

    started = time.perf_counter()
    job = client.submit(handle_file(str(image)), question, api_name="/answer")
    first = None
    for _ in job:  # gradio_client yields each streamed value as it arrives
        if first is None:
            first = time.perf_counter() - started
    answer = job.result(timeout=START_TIMEOUT_S)
    whole = time.perf_counter() - started
    return first if first is not None else whole, whole, answer


def _ratio(ours: float, reference: float) -> str:
    return f"{ours / reference:6.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "demo-out" / "model"), help="model folder or Hub id")
    parser.add_argument(
        "--image", type=Path, default=None, help="image file (default: pydicom's CT_small.dcm)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="latency rounds (median)")
    parser.add_argument("--startups", type=int, default=2, help="start-up rounds (median)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    local = Path(args.model).exists() or args.model.startswith(("/", "."))
    if local and not (Path(args.model) / "config.json").is_file():
        parser.error(f"{args.model} is not a model folder (`make demo` builds demo-out/model)")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from gradio_client import Client

    from training.ask import answer_questions, load_model
    from training.images import load_medical_image

    if args.image is None:
        import pydicom.data

        args.image = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
    work = Path(tempfile.mkdtemp(prefix="medvqa-app-bench-"))
    tokens = args.max_new_tokens

    # start-up: the app until HTTP 200, beside a fresh `medvqa ask` process (alternating)
    app_starts, ask_runs, server = [], [], None
    for r in range(args.startups):
        for kind in ("app", "ask") if r % 2 == 0 else ("ask", "app"):
            if kind == "ask":
                ask_runs.append(ask_process_seconds(args.model, args.image, work, tokens))
                continue
            if server is not None:
                stop(server[0])
            process, url, seconds = start_app(args.model, work, tokens)
            server = (process, url)
            app_starts.append(seconds)

    # latencies, on the last server still running, beside ask's in-process path
    process, url = server
    try:
        model, processor = load_model(args.model)
        image = load_medical_image(args.image, keep_gray=True)
        client = Client(url, verbose=False, analytics_enabled=False, download_files=False)
        client_latency(client, args.image, QUESTIONS[0])  # warm-up: the first call encodes the image
        answer_questions(model, processor, image, [QUESTIONS[0]], max_new_tokens=tokens)
        first, whole, ref_first, ref_whole, answers_equal = [], [], [], [], True
        for r in range(args.repeats):
            question = QUESTIONS[r % len(QUESTIONS)]
            order = ("app", "ref") if r % 2 == 0 else ("ref", "app")
            for kind in order:
                if kind == "app":
                    f, w, answer = client_latency(client, args.image, question)
                    first.append(f)
                    whole.append(w)
                else:
                    started = time.perf_counter()
                    answer_questions(model, processor, image, [question], max_new_tokens=1)
                    ref_first.append(time.perf_counter() - started)
                    started = time.perf_counter()
                    expected = answer_questions(model, processor, image, [question], max_new_tokens=tokens)[0]
                    ref_whole.append(time.perf_counter() - started)
            answers_equal &= answer == expected
    finally:
        stop(process)

    med = statistics.median
    rows = [
        ("start-up (app ready / `medvqa ask` process)", med(app_starts), med(ask_runs)),
        ("first streamed text (/answer / ask, 1 token in-process)", med(first), med(ref_first)),
        (f"whole answer (/answer / ask in-process, {tokens} new tokens max)", med(whole), med(ref_whole)),
    ]
    print(f"model {args.model}, image {args.image.name}, {args.repeats} rounds ({args.startups} start-ups)")
    for name, ours, reference in rows:
        print(f"  {name:<66} {_ratio(ours, reference)}   ({ours:.3f} s vs {reference:.3f} s)")
    print(f"  the app's answers equal ask's: {answers_equal}")
    if args.json:
        figures = {
            name: {"ratio": ours / reference, "seconds": ours, "reference_seconds": reference}
            for name, ours, reference in rows
        }
        args.json.write_text(json.dumps({"model": args.model, "figures": figures}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
