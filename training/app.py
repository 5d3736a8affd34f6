"""``medvqa app``: a Gradio web page for the model (the same code runs the Hugging Face Space).

Upload a PNG / JPEG / TIFF / DICOM / NIfTI file, pick the slice (volumes) and the window (CT presets or a manual
level / width), see the exact square the model receives, then ask questions about it: answers stream word by
word, and the image is encoded once for all of them (:class:`training.app_backend.AppBackend`).  A file the
loader cannot read shows its one-line reason on the page and the server keeps serving.  Model calls go through a
queue with a concurrency limit (``--concurrency``), so parallel users wait instead of exhausting memory.

Besides the page, a named API endpoint ``/answer`` (image file, question) -> answer text serves
``gradio_client``::

    from gradio_client import Client, handle_file

    Client("http://127.0.0.1:7860/").predict(handle_file("scan.dcm"), "Which organ is shown?", api_name="/answer")

Nothing leaves the machine: no share link, analytics off, fonts served by the app itself.  No DICOM patient field
is read into the page or the log (the loader reads pixel attributes only), and uploads are deleted from Gradio's
cache after an hour.
"""

from __future__ import annotations

import argparse
import html
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from training.cli_types import port, positive_int
from training.errors import MedVQAUserError
from training.quantization import add_quantize_argument

# Gradio reads this when it is imported: no usage reports leave the machine.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

FILE_WINDOW = "from the file"
MANUAL_WINDOW = "manual level / width"
AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
MODEL_CONCURRENCY_ID = "model"  # the page's questions and the /answer API share one concurrency limit
UPLOAD_MAX_SIZE = "200mb"
CACHE_CLEANUP = (3600, 3600)  # every hour, delete uploads older than an hour (they may be patient scans)

# Examples from the files the bundled sample set is cut from (`medvqa data samples`), with its questions.
_EXAMPLE_SOURCES = (
    ("pydicom:CT_small.dcm", "What imaging modality is used in this image?"),
    ("nibabel:anatomical.nii", "Which organ is shown in this image?"),
    ("scikit-image:retina.jpg", "What type of imaging is shown here?"),
    ("scikit-image:cell.png", "What imaging modality is used in this image?"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``medvqa app``."""
    parser.add_argument(
        "--model", required=True, help="model folder or Hub id (loaded with trust_remote_code)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=port, default=7860, help="port (default: 7860)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64, help="longest answer in tokens")
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        help="questions answered at the same time (the rest wait)",
    )
    add_quantize_argument(parser)
    parser.add_argument(
        "--queue-size", type=positive_int, default=32, help="waiting requests before new ones are refused"
    )


def sample_examples() -> list[list[str]]:
    """``[file, question]`` pairs from the sample set's source files that are installed."""
    from training.data.samples import SOURCES

    by_name = {source.ref: source for source in SOURCES}
    examples = []
    for name, question in _EXAMPLE_SOURCES:
        try:
            examples.append([str(by_name[name].locate()), question])
        except (KeyError, MedVQAUserError):  # a package without that file: fewer examples, not an error
            continue
    return examples


# ------------------------------------------------------------------------------------------------- page ----


def build_app(backend, *, examples: list[list[str]] | None = None, concurrency: int = 1):
    """The Gradio Blocks of the app around an :class:`~training.app_backend.AppBackend` (not launched)."""
    import gradio as gr

    from training.app_backend import DISCLAIMER, user_message
    from training.images import CT_WINDOW_PRESETS, ct_window

    def window_of(preset: str, level: float | None, width: float | None):
        if preset == MANUAL_WINDOW:
            return ct_window(level=level, width=width)
        return None if preset in (None, FILE_WINDOW) else ct_window(preset)

    def describe(loaded) -> str:
        info, side = loaded.info, loaded.view.size[0]
        parts = [{"dicom": "DICOM", "nifti": "NIfTI", "image": "image"}[info.kind]]
        if info.modality:
            parts.append(info.modality)
        if info.depth > 1:
            default = 0 if info.kind == "image" else info.depth // 2
            at = loaded.options.get(info.depth_option, default)
            parts.append(
                f"{'slice' if info.depth_option == 'slice_index' else 'frame'} {at + 1} of {info.depth}"
            )
        window = loaded.options.get("window")
        if info.windowable:
            parts.append(f"window {window[0]:g} / {window[1]:g}" if window else "window from the file")
        parts.append(f"the model sees {side} x {side} px")
        return "Ready: " + " · ".join(parts) + ". Ask a question."

    def failure(error: MedVQAUserError) -> str:
        return f"**This file cannot be used:** {html.escape(user_message(error))}"

    def on_file(path: str | None, preset: str, level: float | None, width: float | None):
        hidden = gr.update(visible=False)
        if not path:
            return None, None, "Upload an image to start.", hidden, hidden, hidden, []
        try:
            loaded = backend.load(path, window=window_of(preset, level, width))
        except MedVQAUserError as error:
            return None, None, failure(error), hidden, hidden, hidden, []
        info = loaded.info
        default = 0 if info.kind == "image" else info.depth // 2
        slider = gr.update(visible=info.depth > 1, minimum=0, maximum=max(info.depth - 1, 1), value=default)
        axis = gr.update(visible=info.kind == "nifti", value="axial")
        return loaded, loaded.view, describe(loaded), slider, axis, gr.update(visible=info.windowable), []

    def on_view(path, position, axis_name, preset, level, width, axis_changed: bool = False):
        if not path:
            return None, None, "Upload an image to start.", gr.update()
        axis = AXES.get(axis_name) if axis_name else None
        try:
            if axis_changed:  # a new axis has its own number of slices: start in its middle
                loaded = backend.load(path, axis=axis, window=window_of(preset, level, width))
                slider = gr.update(maximum=max(loaded.info.depth - 1, 1), value=loaded.info.depth // 2)
            else:
                window = window_of(preset, level, width)
                loaded = backend.load(path, position=int(position), axis=axis, window=window)
                slider = gr.update()
        except MedVQAUserError as error:
            return None, None, failure(error), gr.update()
        return loaded, loaded.view, describe(loaded), slider

    def ask(loaded, question: str, history: list[dict[str, Any]]) -> Iterator[tuple]:
        question = (question or "").strip()
        if loaded is None:
            yield history, question, "Upload an image first, then ask."
            return
        if not question:
            yield history, "", "Type a question first."
            return
        history = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": "…"}]
        yield history, "", "Answering…"
        answer = ""
        for answer in backend.stream(loaded.image, question):
            history[-1] = {"role": "assistant", "content": answer or "…"}
            yield history, "", "Answering…"
        history[-1] = {"role": "assistant", "content": answer or "(empty answer)"}
        yield history, "", "Answered. Ask another question about this image, or upload another."

    def api_answer(path: str | None, question: str) -> Iterator[str]:
        """Answer a question about an image file (PNG/JPEG/TIFF/DICOM/NIfTI); streams the growing answer."""
        if not path:
            raise gr.Error("no image file was sent", print_exception=False)
        try:
            loaded = backend.load(path)
            yield from backend.stream(loaded.image, question)
        except MedVQAUserError as error:
            # the loader's one-line reason reaches the client as gradio_client's AppError; nothing is logged
            raise gr.Error(html.escape(user_message(error)), print_exception=False) from None

    with gr.Blocks(title="medvqa-lite", delete_cache=CACHE_CLEANUP) as app:
        gr.Markdown("# medvqa-lite\nAsk questions about a medical image (PNG, JPEG, TIFF, DICOM, NIfTI).")
        gr.Markdown(f"**{DISCLAIMER}**", elem_id="disclaimer")
        loaded_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image file", type="filepath", elem_id="upload")
                position = gr.Slider(0, 1, value=0, step=1, label="Slice / frame", visible=False)
                axis = gr.Radio(list(AXES), value="axial", label="Volume axis", visible=False)
                with gr.Group(visible=False) as window_group:
                    preset = gr.Dropdown(
                        [FILE_WINDOW, *CT_WINDOW_PRESETS, MANUAL_WINDOW],
                        value=FILE_WINDOW,
                        label="Window (CT presets in Hounsfield units)",
                    )
                    with gr.Row():
                        level = gr.Number(value=40, label="Level (centre)")
                        width = gr.Number(value=400, label="Width")
                view = gr.Image(
                    label="What the model sees",
                    type="pil",
                    interactive=False,
                    elem_id="view",
                    buttons=["download", "fullscreen"],  # no share button: it would post to the Hub
                )
                status = gr.Markdown("Upload an image to start.", elem_id="status")
            with gr.Column(scale=2):
                chat = gr.Chatbot(
                    label="Conversation about this image",
                    elem_id="chat",
                    render_markdown=False,  # model text is shown as it is
                    feedback_options=None,
                    buttons=["copy", "copy_all"],  # no share button: it would post to the Hub
                    height=420,
                )
                question = gr.Textbox(
                    label="Question", placeholder="Which organ is shown?", elem_id="question", lines=1
                )
                with gr.Row():
                    ask_button = gr.Button("Ask", variant="primary", elem_id="ask")
                    clear = gr.Button("Clear conversation")
        if examples:
            gr.Examples(examples, inputs=[upload, question], label="Examples from the bundled sample set")

        view_inputs = [upload, position, axis, preset, level, width]
        upload.change(
            on_file,
            [upload, preset, level, width],
            [loaded_state, view, status, position, axis, window_group, chat],
            api_visibility="private",
            concurrency_limit=4,  # loading is light next to answering
        )
        for trigger in (position.release, preset.change, level.submit, width.submit):
            trigger(
                on_view,
                view_inputs,
                [loaded_state, view, status, position],
                api_visibility="private",
                concurrency_limit=4,
            )
        axis.change(
            lambda *a: on_view(*a, axis_changed=True),
            view_inputs,
            [loaded_state, view, status, position],
            api_visibility="private",
            concurrency_limit=4,
        )
        gr.on(
            [ask_button.click, question.submit],
            ask,
            [loaded_state, question, chat],
            [chat, question, status],
            api_visibility="private",
            concurrency_limit=concurrency,
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
        clear.click(lambda: [], None, chat, api_visibility="private", queue=False)

        # The /answer endpoint: components that are never drawn (visible=False keeps them out of the page) give
        # gradio_client a typed file input, which gr.api's type hints cannot describe.
        api_file = gr.File(visible=False, type="filepath", label="image")
        api_question = gr.Textbox(visible=False, label="question")
        api_output = gr.Textbox(visible=False, label="answer")
        gr.Button(visible=False).click(
            api_answer,
            [api_file, api_question],
            api_output,
            api_name="answer",
            concurrency_limit=concurrency,
            concurrency_id=MODEL_CONCURRENCY_ID,
        )
    return app


# ------------------------------------------------------------------------------------------------ serve ----


def launch(
    app,
    *,
    host: str | None = "127.0.0.1",
    port: int | None = 7860,
    concurrency: int = 1,
    queue_size: int = 32,
    allowed_paths: list[str] | None = None,
    block: bool = True,
):
    """Queue + launch with no share link and nothing fetched from outside; ``host``/``port`` None take
    Gradio's defaults (on a Space: its ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``)."""
    app.queue(default_concurrency_limit=concurrency, max_size=queue_size)
    return app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=False,  # unexpected errors stay generic on the page; user errors carry their reason
        max_file_size=UPLOAD_MAX_SIZE,
        allowed_paths=allowed_paths,
        prevent_thread_lock=not block,
        quiet=True,
    )


def serve(
    model: str,
    *,
    host: str | None = "127.0.0.1",
    port: int | None = 7860,
    max_new_tokens: int = 64,
    concurrency: int = 1,
    queue_size: int = 32,
    block: bool = True,
    quantize: str | None = None,
):
    """Load ``model`` and serve the app (the body of ``medvqa app`` and of the Space's ``app.py``)."""
    from training.app_backend import AppBackend
    from training.ask import load_model

    started = time.perf_counter()
    model_obj, processor = load_model(model, quantize=quantize)
    loaded_at = time.perf_counter()
    backend = AppBackend(model_obj, processor, max_new_tokens=max_new_tokens)
    examples = sample_examples()
    app = build_app(backend, examples=examples, concurrency=concurrency)
    try:
        launch(
            app,
            host=host,
            port=port,
            concurrency=concurrency,
            queue_size=queue_size,
            allowed_paths=[row[0] for row in examples],
            block=False,
        )
    except OSError as exc:  # Gradio: "Cannot find empty port in range ..."
        raise MedVQAUserError(f"--port {port}", str(exc).splitlines()[0]) from None
    print(
        f"medvqa app: serving {model} at {app.local_url} (model loaded in {loaded_at - started:.1f} s, "
        f"ready {time.perf_counter() - started:.1f} s after start); Ctrl-C stops it",
        flush=True,
    )
    if block:
        app.block_thread()
    return app


def run(args: argparse.Namespace) -> int:
    """``medvqa app``."""
    # --port, --concurrency, --queue-size and --max-new-tokens are checked by argparse (training/cli_types.py)
    serve(
        args.model,
        host=args.host,
        port=args.port,
        max_new_tokens=args.max_new_tokens,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        quantize=args.quantize,
    )
    return 0


def model_from_space_readme(readme: str | Path = "README.md") -> str:
    """The model a Space serves: the first entry of ``models:`` in its README metadata (the one place it is
    named).  ``MEDVQA_MODEL`` in the environment overrides it."""
    from huggingface_hub import metadata_load

    if os.environ.get("MEDVQA_MODEL"):
        return os.environ["MEDVQA_MODEL"]
    models = (metadata_load(readme) or {}).get("models") or []
    if not models:
        raise MedVQAUserError(readme, "the Space metadata names no model (models: [...])")
    return str(models[0])
