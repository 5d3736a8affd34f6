"""What ``medvqa app`` does apart from drawing the page: load an upload, show what the model sees, answer.

Kept free of Gradio so that it can be tested and reused on its own.  Loading goes through the one loader
(:func:`training.images.load_medical_image`), answering through :mod:`training.ask` (the same prompt, the same
greedy decoding as ``medvqa ask``), so the app cannot drift from the command line.

The image is encoded and its prompt prefix (through the image tokens) prefilled once: the prefilled KV caches
(:class:`training.shared_prefix.ImagePrefix`) are kept in a small LRU cache keyed by the SHA-256 of the pixel tensor
the model receives, so every question about the same picture (from the page or from the ``/answer`` API, from any
user) extends a copy of it and prefills only its own words, while a new slice or window (a new picture) is encoded
anew.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from training.ask import stream_answer
from training.errors import MedVQAUserError
from training.images import ImageLoadError, MedicalImageInfo, load_medical_image, medical_image_info

DISCLAIMER = (
    "For research and education only. This model is not a medical device: it can be wrong, and its answers "
    "are not a diagnosis and must not guide the care of a patient."
)


@dataclass
class LoadedImage:
    """An upload as the model will see it.

    ``image`` goes to the processor, ``view`` is the processor's output turned back into pixels (the exact
    square the vision tower receives), ``info`` the header facts (kind, frames / slices, windowable);
    ``options`` the loader keywords that produced it (frame / slice / axis / window).
    """

    image: Image.Image
    view: Image.Image
    info: MedicalImageInfo
    options: dict[str, Any]


def user_message(error: MedVQAUserError) -> str:
    """The one-line reason of a user error, without its subject: for an upload the subject is a temporary
    path on the server (and a file name may carry a patient's name), neither of which a page should show."""
    return error.reason


class AppBackend:
    """Model + processor and the answering of an app, shared by all users of one server.

    Args:
        model, processor: from :func:`training.ask.load_model`.
        max_new_tokens: longest answer.
        cache_size: how many prefilled images to keep (each a KV cache of layers x 2 x KV width x prefix tokens;
            about 26 MiB on the paper's model in bf16).
    """

    def __init__(self, model, processor, *, max_new_tokens: int = 64, cache_size: int = 16) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.cache_size = cache_size
        self.encodings = (
            0  # how many times an image was encoded and prefilled; tests and the benchmark read it
        )
        self._prefixes: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()  # the queue runs several events at once, each in its own thread

    # ----------------------------------------------------------------------------------------- images ----

    def load(
        self,
        path: str | Path,
        *,
        position: int | None = None,
        axis: int | None = None,
        window: tuple[float, float] | None = None,
    ) -> LoadedImage:
        """Load ``path`` with the medical loader: ``position`` is the DICOM frame / NIfTI slice / TIFF page
        (default the loader's: middle frame or slice, first page), ``axis`` the NIfTI axis, ``window`` a
        ``(centre, width)`` from :func:`training.images.ct_window`.

        Raises:
            ImageLoadError: the file cannot be read; ``reason`` says why in one line.
        """
        # The full loader first: it gives the precise reason for a bad file; the header facts come after.
        options: dict[str, Any] = {"window": window}
        info = None
        if position is not None or axis is not None:
            try:
                info = medical_image_info(path, axis=axis)
            except ImageLoadError:
                load_medical_image(path)  # raises with the loader's precise reason
                raise
            if info.kind == "nifti":
                options["axis"] = axis
            if position is not None:
                options[info.depth_option] = position
        image = load_medical_image(path, keep_gray=True, **options)
        info = info or medical_image_info(path, axis=axis)
        return LoadedImage(image=image, view=self.model_view(image), info=info, options=options)

    def pixel_values(self, image: Image.Image):
        """The processor's tensor for one image (1, 3, S, S)."""
        return self.processor(images=[image], return_tensors="pt")["pixel_values"]

    def model_view(self, image: Image.Image) -> Image.Image:
        """The processor's output de-normalised: the exact S x S picture the vision tower receives."""
        import numpy as np

        ip = self.processor.image_processor
        pixels = self.pixel_values(image)[0].float().numpy()  # (3, S, S), normalised
        mean = np.asarray(ip.image_mean, dtype=np.float32)[:, None, None]
        std = np.asarray(ip.image_std, dtype=np.float32)[:, None, None]
        rgb = (pixels * std + mean) / (ip.rescale_factor if ip.do_rescale else 1.0)
        return Image.fromarray(np.clip(rgb.round(), 0, 255).astype(np.uint8).transpose(1, 2, 0), "RGB")

    def prefix(self, image: Image.Image):
        """The image's prefilled prompt prefix, from the cache when the same pixels were seen before."""
        from training.shared_prefix import prefill_image_prefix

        pixels = self.pixel_values(image)
        key = hashlib.sha256(pixels.numpy().tobytes()).hexdigest()
        with self._lock:
            if key in self._prefixes:
                self._prefixes.move_to_end(key)
                return self._prefixes[key]
        prefix = prefill_image_prefix(
            self.model, self.processor, image
        )  # outside the lock: others keep answering
        with self._lock:
            self.encodings += 1
            self._prefixes[key] = prefix
            while len(self._prefixes) > self.cache_size:
                self._prefixes.popitem(last=False)
        return prefix

    # ---------------------------------------------------------------------------------------- answers ----

    def stream(self, image: Image.Image, question: str) -> Iterator[str]:
        """The answer to ``question`` about ``image`` as it grows (the last value is the whole answer).

        Raises:
            MedVQAUserError: an empty question.
        """
        if not question or not question.strip():
            raise MedVQAUserError("question", "the question is empty")
        yield from stream_answer(
            self.model,
            self.processor,
            image,
            question.strip(),
            prefix=self.prefix(image),
            max_new_tokens=self.max_new_tokens,
        )

    def answer(self, image: Image.Image, question: str) -> str:
        """The whole answer (the last value of :meth:`stream`)."""
        *_, last = self.stream(image, question)  # stream yields at least once
        return last
