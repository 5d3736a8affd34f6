"""``medvqa app``: the answering backend in-process, then gradio_client against a live server on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import app_fixtures
import numpy as np
import pytest
from app_fixtures import APP_MAX_NEW_TOKENS, PATIENT_MARKERS
from PIL import Image

from training.cli import main

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
live_app, app_files = app_fixtures.live_app, app_fixtures.app_files  # the shared server and files


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path):
    from training.app_backend import AppBackend
    from training.ask import load_model

    model, processor = load_model(tiny_model_dir)
    return AppBackend(model, processor, max_new_tokens=APP_MAX_NEW_TOKENS)


def _nifti_brain() -> Path:
    from nibabel.testing import data_path

    return Path(data_path) / "anatomical.nii"


# ------------------------------------------------------------------------------------------ backend ----


def test_two_questions_encode_the_image_once_and_match_medvqa_ask(backend, app_files):
    from training.ask import answer_questions

    loaded = backend.load(app_files["dicom"])
    questions = ["Which organ is shown?", "Is this a CT image?"]
    before = backend.encodings
    streamed = [list(backend.stream(loaded.image, q)) for q in questions]
    assert backend.encodings == before + 1  # the second question reused the features
    expected = [
        answer_questions(
            backend.model, backend.processor, loaded.image, [q], max_new_tokens=APP_MAX_NEW_TOKENS
        )[0]
        for q in questions
    ]
    assert [parts[-1] for parts in streamed] == expected
    for parts in streamed:  # a growing answer: each value extends the one before
        assert all(b.startswith(a) for a, b in zip(parts, parts[1:]))
    # another window is another picture: encoded anew, and then cached too
    bone = backend.load(app_files["dicom"], window=(400, 1800))
    backend.answer(bone.image, questions[0])
    backend.answer(bone.image, questions[1])
    assert backend.encodings == before + 2


def test_the_view_is_the_processors_square_de_normalised(backend, tmp_path):
    size = backend.processor.image_processor.crop_size["height"]
    gray = tmp_path / "gray.png"
    Image.new("L", (300, 200), 100).save(gray)
    view = backend.load(gray).view
    assert view.size == (size, size) and view.mode == "RGB"
    pixels = np.asarray(view)
    assert pixels.min() >= 99 and pixels.max() <= 101
    # a left-dark / right-bright image stays so after resize + centre crop
    ramp = tmp_path / "halves.png"
    Image.fromarray(
        np.repeat(np.r_[np.zeros(150), np.full(150, 255)][None, :], 200, 0).astype(np.uint8)
    ).save(ramp)
    halves = np.asarray(backend.load(ramp).view).astype(int)
    assert halves[:, : size // 4].mean() < 5 and halves[:, -size // 4 :].mean() > 250


def test_volume_positions_axes_and_ct_windows(backend, app_files):
    from training.images import CT_WINDOW_PRESETS, ct_window, medical_image_info

    nifti = _nifti_brain()
    info = medical_image_info(nifti)
    assert (info.kind, info.depth_option, info.windowable) == ("nifti", "slice_index", True)
    import nibabel as nib

    assert sorted(medical_image_info(nifti, axis=a).depth for a in (0, 1, 2)) == sorted(
        nib.load(nifti).shape[:3]
    )
    low, mid = backend.load(nifti, position=5), backend.load(nifti)
    assert np.asarray(low.image).tolist() != np.asarray(mid.image).tolist()
    dicom = medical_image_info(app_files["dicom"])
    assert (dicom.kind, dicom.modality, dicom.depth, dicom.windowable) == ("dicom", "CT", 1, True)
    views = {
        name: np.asarray(backend.load(app_files["dicom"], window=ct_window(name)).image)
        for name in CT_WINDOW_PRESETS
    }
    assert len({v.tobytes() for v in views.values()}) == len(CT_WINDOW_PRESETS)
    assert views["lung"].mean() > views["bone"].mean()  # soft tissue is white in a lung window, dark in bone
    assert ct_window(level=50, width=350) == (50.0, 350.0)
    assert ct_window() is None


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"preset": "liver"}, "unknown window preset"),
        ({"level": 40}, "both"),
        ({"level": 40, "width": 0}, "positive"),
    ],
)
def test_bad_windows_are_user_errors(kwargs, says):
    from training.errors import MedVQAUserError
    from training.images import ct_window

    with pytest.raises(MedVQAUserError, match=says):
        ct_window(**kwargs)


def test_a_bad_file_gives_the_loaders_reason_without_the_path(backend, app_files):
    from training.app_backend import user_message
    from training.errors import MedVQAUserError

    with pytest.raises(MedVQAUserError) as caught:
        backend.load(app_files["bad"])
    assert user_message(caught.value) == "not an image (the file holds text)"
    assert str(app_files["bad"].parent) not in user_message(caught.value)


def test_examples_come_from_the_sample_sources_and_load():
    from training.app import sample_examples
    from training.images import load_medical_image

    examples = sample_examples()
    assert {Path(path).suffix for path, _ in examples} >= {".dcm", ".nii"}
    for path, question in examples:
        load_medical_image(path)
        assert question.endswith("?")


def test_model_calls_share_one_concurrency_limit_and_only_answer_is_public(backend):
    from training.app import MODEL_CONCURRENCY_ID, build_app

    app = build_app(backend, concurrency=2)
    model_fns = [fn for fn in app.fns.values() if fn.concurrency_id == MODEL_CONCURRENCY_ID]
    assert len(model_fns) == 2  # the page's question and the /answer API
    assert all(fn.concurrency_limit == 2 for fn in model_fns)
    public = [fn.api_name for fn in app.fns.values() if fn.api_visibility == "public"]
    assert public == ["answer"]


def test_bad_options_exit_2_with_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as refused:  # options are checked by argparse (training/cli_types.py)
        main(["app", "--model", str(tmp_path), "--port", "0"])
    assert refused.value.code == 2
    assert main(["app", "--model", str(tmp_path / "missing"), "--port", "7861"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--port" in err[0] and "missing" in err[1]


# ------------------------------------------------------------------------------ live server, client ----


@pytest.mark.slow
def test_gradio_client_dicom_two_questions_then_a_bad_file(live_app, app_files, backend):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(live_app.url, verbose=False, analytics_enabled=False, download_files=False)
    assert "/answer" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    loaded = backend.load(app_files["dicom"])
    for question in ("Which organ is shown in this image?", "Is this a CT image?"):
        job = client.submit(handle_file(str(app_files["dicom"])), question, api_name="/answer")
        answer = job.result(timeout=120)
        assert answer == backend.answer(loaded.image, question)
        partial = job.outputs()
        assert partial[-1] == answer and all(b.startswith(a) for a, b in zip(partial, partial[1:]))

    with pytest.raises(AppError, match=r"not an image \(the file holds text\)"):
        client.predict(handle_file(str(app_files["bad"])), "Which organ is shown?", api_name="/answer")
    # the server keeps serving after the bad file
    assert client.predict(handle_file(str(app_files["png"])), "What is shown?", api_name="/answer") == (
        backend.answer(backend.load(app_files["png"]).image, "What is shown?")
    )
    log = live_app.log_text()
    assert not [m for m in PATIENT_MARKERS if m in log]
    assert "Traceback" not in log


@pytest.mark.slow
def test_latency_benchmark_runs_and_the_apps_answers_equal_asks(tiny_model_dir, tmp_path, capsys):
    from benchmarks.app_latency import main as bench

    out = tmp_path / "latency.json"
    args = ["--model", str(tiny_model_dir), "--startups", "1", "--repeats", "2", "--max-new-tokens", "4"]
    assert bench([*args, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "the app's answers equal ask's: True" in printed
    figures = json.loads(out.read_text())["figures"]
    assert len(figures) == 3
    assert all(f["ratio"] > 0 and f["seconds"] > 0 and f["reference_seconds"] > 0 for f in figures.values())
