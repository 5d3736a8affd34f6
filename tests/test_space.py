"""``medvqa push --space``: the Space's files, its metadata naming the model, the push, and the Space running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import app_fixtures
import pytest
from app_fixtures import REPO, free_port, start_server, stop_app

from training.cli import main

app_files = app_fixtures.app_files


class RecordingHfApi:
    """Records the Hub calls instead of making them (the tests never reach the network)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict[str, Any]]] = []

    def create_repo(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("create_repo", args, kwargs))

    def create_commit(self, *args: Any, **kwargs: Any) -> SimpleNamespace:
        self.calls.append(("create_commit", args, kwargs))
        return SimpleNamespace(commit_url="https://huggingface.co/spaces/x/y/commit/1")


def _write(files: dict[str, bytes], folder: Path) -> Path:
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def test_the_readme_metadata_names_the_model_and_the_gradio_sdk(tmp_path):
    from huggingface_hub import metadata_load

    from hub_card.space import space_files
    from training.app import model_from_space_readme

    files = space_files("org/medvqa-lite", "org/medvqa-space")
    _write(files, tmp_path)
    meta = metadata_load(tmp_path / "README.md")
    import gradio

    assert meta["models"] == ["org/medvqa-lite"]
    assert (meta["sdk"], meta["sdk_version"], meta["app_file"]) == ("gradio", gradio.__version__, "app.py")
    assert model_from_space_readme(tmp_path / "README.md") == "org/medvqa-lite"
    readme = files["README.md"].decode()
    assert "{model_id}" not in readme and "not a medical device" in readme
    assert {"training/app.py", "training/images.py", "modeling_medvqa/modeling_medvqa.py"} <= set(files)
    assert not [p for p in files if "__pycache__" in p or p.endswith(".pyc")]


def test_requirements_pin_the_tested_versions():
    constraints = dict(
        line.split("==")
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    text = (REPO / "hub_card" / "space" / "requirements.txt").read_text()
    pins = dict(re.findall(r"^([\w.-]+)==(\S+)$", text, re.MULTILINE))
    assert pins and all(constraints.get(name) == version for name, version in pins.items())
    assert {"torch", "transformers", "timm", "pydicom", "nibabel"} <= set(pins)


def test_dry_run_lists_the_files_and_contacts_nothing(capsys):
    assert main(["push", "--space", "org/medvqa-space", "--model", "org/medvqa-lite", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "org/medvqa-space (private) serving org/medvqa-lite" in out
    assert "  app.py" in out and "  requirements.txt" in out and "  training/app.py" in out
    assert "nothing was sent" in out


def test_push_creates_a_private_gradio_space_in_one_commit():
    from hub_card.space import push_space, space_files

    api = RecordingHfApi()
    sent = push_space("org/medvqa-space", "org/medvqa-lite", api=api, log=lambda _: None)
    (name, args, kwargs), (commit_name, commit_args, commit_kwargs) = api.calls
    assert name == "create_repo" and args == ("org/medvqa-space",)
    assert kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio" and kwargs["private"] is True
    assert commit_name == "create_commit" and commit_kwargs["repo_type"] == "space"
    operations = commit_args[1]
    assert (
        [op.path_in_repo for op in operations]
        == sent
        == list(space_files("org/medvqa-lite", "org/medvqa-space"))
    )
    api = RecordingHfApi()
    push_space("org/medvqa-space", "org/medvqa-lite", public=True, api=api, log=lambda _: None)
    assert api.calls[0][2]["private"] is False


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--space", "not an id", "--model", "org/m"], "not a Hub Space id"),
        (["--space", "org/s", "--model", "/some/folder"], "not a Hub model id"),
        (["--space", "org/s", "--model", "org/m", "--repo-id", "org/r"], "not both"),
    ],
)
def test_bad_space_options_exit_2_with_one_line(argv, says, capsys):
    assert main(["push", *argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


@pytest.mark.slow
def test_the_space_folder_runs_on_its_own_copy_of_the_code(tiny_model_dir, tmp_path, app_files):
    """The uploaded files alone, run as a Space runs them (``python app.py``), answer through /answer."""
    from gradio_client import Client, handle_file

    from hub_card.space import space_files

    space = _write(space_files("org/medvqa-lite", "org/medvqa-space"), tmp_path / "space")
    # the Space's packages are its own copies, not this checkout's
    where = subprocess.run(
        [
            sys.executable,
            "-c",
            "import app, training, modeling_medvqa as m; print(training.__file__, m.__file__, app.MODEL_ID)",
        ],
        cwd=space,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert Path(where[0]).parent == space / "training" and Path(where[1]).parent == space / "modeling_medvqa"
    assert where[2] == "org/medvqa-lite"

    port = free_port()
    env = {
        "PYTHONPATH": "",
        "MEDVQA_MODEL": str(
            tiny_model_dir
        ),  # the Hub model is out of reach offline: the same code, a local model
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    server = start_server([sys.executable, "app.py"], space, port, env)
    try:
        client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
        answer = client.predict(
            handle_file(str(app_files["dicom"])), "Which organ is shown?", api_name="/answer"
        )
        assert isinstance(answer, str)
    finally:
        stop_app(server)
