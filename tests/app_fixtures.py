"""A live ``medvqa app`` server on 127.0.0.1 (a subprocess, as users start it) and the files the app tests upload."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PATIENT_MARKERS = ("Qzxv^Marker", "QZXV-4242-ID", "19010203")  # patient name, id, birth date of marked.dcm
APP_MAX_NEW_TOKENS = 8
START_TIMEOUT_S = 240  # generous: the CI machine may be busy; the test fails (not hangs) past it


@dataclass
class LiveApp:
    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it; the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(model_dir: Path, work: Path, *extra: str) -> LiveApp:
    """``medvqa app`` on a free port of 127.0.0.1; returns once it says it serves (or fails with its log)."""
    port = free_port()
    command = [sys.executable, "-m", "training.cli", "app", "--model", str(model_dir), "--port", str(port)]
    return start_server(
        [*command, "--max-new-tokens", str(APP_MAX_NEW_TOKENS), *extra], work, port, {"PYTHONPATH": str(REPO)}
    )


def start_server(command: list[str], work: Path, port: int, env_extra: dict[str, str]) -> LiveApp:
    """Run ``command`` in ``work`` (offline, no analytics, its own Gradio cache) until it prints that it serves."""
    log = work / "app.log"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(work / "gradio-cache"),
        **env_extra,
    }
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    app = LiveApp(f"http://127.0.0.1:{port}/", log, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while "medvqa app: serving" not in app.log_text():
        if process.poll() is not None:
            pytest.fail(f"{command[1:3]} exited with {process.returncode}:\n{app.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            stop_app(app)
            pytest.fail(f"{command[1:3]} did not start within {START_TIMEOUT_S} s:\n{app.log_text()[-3000:]}")
        time.sleep(0.5)
    return app


def stop_app(app: LiveApp) -> None:
    app.process.terminate()
    try:
        app.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        app.process.kill()
        app.process.wait(timeout=30)


@pytest.fixture(scope="session")
def live_app(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApp]:
    """One server for the client and browser tests of a session."""
    app = start_app(tiny_model_dir, tmp_path_factory.mktemp("live_app"))
    yield app
    stop_app(app)


@pytest.fixture(scope="session")
def app_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CT DICOM whose patient fields carry markers, a PNG, and a text file named ``.png``."""
    import pydicom
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder = tmp_path_factory.mktemp("app_files")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PATIENT_MARKERS
    ds.save_as(folder / "marked.dcm")
    Image.effect_mandelbrot((96, 80), (-2.0, -1.2, 0.8, 1.2), 40).save(folder / "mandelbrot.png")
    (folder / "notes.png").write_text("this is not an image, only text\n", encoding="utf-8")
    return {"dicom": folder / "marked.dcm", "png": folder / "mandelbrot.png", "bad": folder / "notes.png"}
