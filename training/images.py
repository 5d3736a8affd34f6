"""The one medical image loader used everywhere: training, evaluation and ``medvqa ask``.

``load_medical_image(path)`` returns an RGB :class:`PIL.Image.Image` ready for the vision processor:

* PNG / JPEG / TIFF / BMP / GIF through Pillow: 8-bit gray, RGB, RGBA (composited on black), palette,
  CMYK; 16-bit and float gray get a percentile window (0.5-99.5 %), like DICOM without a window.
  ``frame`` picks a page of a multi-page TIFF / GIF (first page by default).
* DICOM through pydicom: Modality LUT (rescale slope/intercept, or the LUT sequence), then the file's VOI LUT
  sequence or window centre/width (also from enhanced multi-frame functional groups), else a percentile window;
  MONOCHROME1 is inverted; colour (RGB, YBR, palette) is converted to RGB; multi-frame files give the middle
  frame unless ``frame`` is given; compressed transfer syntaxes are decoded by the decoders installed, and a
  missing decoder is an error naming the package to install.  Only pixel attributes are read: no patient
  field is copied anywhere, not even into error messages.
* NIfTI (``.nii``, ``.nii.gz``) through nibabel: a slice along world ``axis`` (0 sagittal, 1 coronal,
  2 axial (default)) at ``slice_index`` (middle by default) in canonical RAS order, shown in radiological
  convention (patient right on image left, anterior / superior up); 4-D volumes take ``frame`` (middle by
  default) along the fourth axis; percentile window.
* An already open :class:`PIL.Image.Image` or a numpy array (H x W gray, H x W x 3 / 4 colour) is accepted too.

Bad input raises :class:`ImageLoadError` (a :class:`MedVQAUserError`) naming the path and the reason: missing
or empty file, truncated file, a file that is not an image (e.g. text named ``.png``), a decompression bomb
(more than ``max_pixels`` pixels in the 2-D image), a DICOM file without pixel data, a missing decoder.

Speed matters (the loader is benchmarked against open_clip's ``Image.open(p).convert("RGB")``): an 8-bit RGB
file is returned as loaded, without a copy; windowing runs in float32 in place, and percentiles are taken on a
strided subsample of big images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.errors import MedVQAUserError

DEFAULT_MAX_PIXELS = 100_000_000
"""Pixel cap of one 2-D image (frame / slice). Pillow's own bomb limit is 89 M (warning) / 179 M (error)."""

PERCENTILE_WINDOW = (0.5, 99.5)
"""Low / high percentiles of the fallback window for images without a window of their own."""

_PERCENTILE_SAMPLE = 1 << 18  # percentiles of big images are taken on a strided sample of ~262k pixels
_DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
_NIFTI_SUFFIXES = (".nii", ".nii.gz")

ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray


class ImageLoadError(MedVQAUserError):
    """An image that cannot be loaded; the message names the path and the reason."""


def load_medical_image(
    path: ImageInput,
    *,
    frame: int | None = None,
    axis: int | None = None,
    slice_index: int | None = None,
    window: tuple[float, float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_gray: bool = False,
) -> Image.Image:
    """Load a medical image file (or an open PIL image / numpy array) as an RGB PIL image.

    Args:
        path: a PNG/JPEG/TIFF/... file, a DICOM file, a NIfTI volume, a PIL image or a numpy array.
        frame: DICOM frame / TIFF page / NIfTI 4th-axis volume; default: middle DICOM frame and NIfTI volume,
            first TIFF page.
        axis: NIfTI world axis to slice across (0 sagittal, 1 coronal, 2 axial, the default).
        slice_index: NIfTI slice along ``axis`` in RAS order; default the middle slice.
        window: ``(centre, width)`` in stored units after rescale (Hounsfield units for CT) that replaces the
            file's window / the percentile window of gray DICOM, NIfTI and 16-bit images (e.g. ``(40, 80)``
            brain, ``(600, 2800)`` bone).  8-bit and colour images are returned as they are.
        max_pixels: largest accepted number of pixels in the 2-D image (decompression-bomb guard).
        keep_gray: return 8-bit gray images in mode ``L`` instead of RGB.  ``MedVQAProcessor`` resizes them
            first and converts after, as open_clip's transform does: a third of the pixels to resize.

    Raises:
        ImageLoadError: the input cannot be read as an image; the message names the path and the reason.
    """
    image = _load(path, frame=frame, axis=axis, slice_index=slice_index, window=window, max_pixels=max_pixels)
    # Every gray path ends here, in one place: RGB for callers, mode L for the processor's resize-first path.
    if image.mode == "L" and not keep_gray:
        return image.convert("RGB")
    return image


def _load(
    path: ImageInput,
    *,
    frame: int | None = None,
    axis: int | None = None,
    slice_index: int | None = None,
    window: tuple[float, float] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """The loader proper: RGB, or 8-bit gray still in mode L (converted by the caller)."""
    if isinstance(path, Image.Image):
        return _pil_to_rgb(path, "<PIL image>", frame, max_pixels, window)
    if isinstance(path, np.ndarray):
        _check_pixels("<array>", int(np.prod(path.shape[:2])), max_pixels)
        return _array_to_rgb(path, "<array>", window)
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise ImageLoadError(p, "no such file") from None
    except OSError as exc:
        raise ImageLoadError(p, f"cannot read ({exc.strerror or exc})") from None
    if not p.is_file():
        raise ImageLoadError(p, "not a file")
    if size == 0:
        raise ImageLoadError(p, "empty file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(352)
    except OSError as exc:
        raise ImageLoadError(p, f"cannot read ({exc.strerror or exc})") from None
    name = p.name.lower()
    if head[128:132] == b"DICM" or p.suffix.lower() in _DICOM_SUFFIXES:
        return _load_dicom(p, head, frame, max_pixels, window)
    if name.endswith(_NIFTI_SUFFIXES) or head[344:348] in (b"n+1\0", b"ni1\0"):
        return _load_nifti(p, frame, axis, slice_index, max_pixels, window)
    return _load_pil(p, head, frame, max_pixels, window)


# --------------------------------------------------------------------------------------------- Pillow ----


def _load_pil(
    p: Path, head: bytes, frame: int | None, max_pixels: int, window: tuple[float, float] | None
) -> Image.Image:
    try:
        im = Image.open(p)
    except Image.DecompressionBombError:
        raise ImageLoadError(p, f"decompression bomb (more than {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise ImageLoadError(p, _not_an_image_reason(head)) from None
    except OSError as exc:
        raise ImageLoadError(p, f"unreadable image ({exc})") from None
    with im:
        return _pil_to_rgb(im, p, frame, max_pixels, window)


def _pil_to_rgb(
    im: Image.Image,
    subject: object,
    frame: int | None,
    max_pixels: int,
    window: tuple[float, float] | None = None,
) -> Image.Image:
    if frame is not None:
        n = getattr(im, "n_frames", 1)
        if not 0 <= frame < n:
            raise ImageLoadError(subject, f"frame {frame} out of range (the image has {n})")
        im.seek(frame)
    # Checked on the header size, before decoding anything.
    _check_pixels(subject, im.width * im.height, max_pixels)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow words it "image file is truncated", "broken data stream", "unrecognized data stream" ...
        reason = f"truncated or damaged image file ({exc})"
        raise ImageLoadError(subject, reason) from None
    if im.format in ("JPEG", "MPO", "TIFF", "WEBP") and 0x0112 in im.getexif():
        # Photographs (dermoscopy, fundus) may carry an EXIF rotation; only then pay for a transpose.
        im = ImageOps.exif_transpose(im)
    mode = im.mode
    if mode == "RGB":
        return im  # no copy: Image.convert("RGB") on an RGB image would copy it
    if mode == "L":
        return im  # load_medical_image converts (or, with keep_gray, the processor after resizing)
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "1"):
        return im.convert("RGB")
    if mode == "P":
        if "transparency" in im.info:
            return _composite_on_black(im.convert("RGBA"))
        return im.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_black(im.convert("RGBA"))
    # 16-bit / 32-bit integer and float gray ("I;16", "I;16B", "I", "F"): window to 8 bit like DICOM.
    return _array_to_rgb(np.asarray(im), subject, window)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    if rgba.getextrema()[3][0] == 255:  # fully opaque: dropping alpha is exact and cheaper
        return rgba.convert("RGB")
    # Medical backgrounds are black; compositing avoids garbage colour under transparent pixels.
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")


def _not_an_image_reason(head: bytes) -> str:
    sample = head[:256]
    if sample and b"\0" not in sample:
        try:
            sample.decode("utf-8")
            return "not an image (the file holds text)"
        except UnicodeDecodeError:
            pass
    return "not an image (unknown format)"


# ---------------------------------------------------------------------------------------------- arrays ----


def _array_to_rgb(arr: np.ndarray, subject: object, window: tuple[float, float] | None = None) -> Image.Image:
    """A numpy image as RGB: uint8 kept as is, other gray types windowed (``window`` or percentiles)."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        if arr.dtype == np.uint8:
            return Image.fromarray(arr, "L")
        lo, hi = _explicit_window(window) if window else _percentile_window(arr)
        return Image.fromarray(_window(arr, lo, hi), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        if arr.dtype != np.uint8:
            arr = _to_uint8_colour(arr)
        if arr.shape[2] == 4:
            return _composite_on_black(Image.fromarray(np.ascontiguousarray(arr), "RGBA"))
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    raise ImageLoadError(subject, f"unsupported array shape {arr.shape} (expected H x W or H x W x 3/4)")


def _to_uint8_colour(arr: np.ndarray) -> np.ndarray:
    if np.issubdtype(arr.dtype, np.integer):
        hi = int(arr.max())
        shift = max(0, hi.bit_length() - 8)  # keep the used bit depth (e.g. 12 bits stored in 16)
        return (arr >> shift).astype(np.uint8)
    return _window(arr, 0.0, max(float(arr.max()), 1e-6))


def _percentile_window(arr: np.ndarray) -> tuple[float, float]:
    flat = arr.reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // _PERCENTILE_SAMPLE]  # strided view, no copy
    finite = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, PERCENTILE_WINDOW)
    return float(lo), float(hi)


def _window(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear window [lo, hi] -> uint8 0..255 (float32, in place after the one conversion)."""
    out = arr.astype(np.float32, copy=True)
    width = hi - lo
    if width <= 0:  # flat image: everything at or above the level is white
        return np.where(out >= hi, 255, 0).astype(np.uint8)
    out -= lo
    out *= 255.0 / width
    np.clip(out, 0.0, 255.0, out=out)
    np.nan_to_num(out, copy=False, nan=0.0)
    return out.astype(np.uint8)


def _explicit_window(window: tuple[float, float]) -> tuple[float, float]:
    centre, width = float(window[0]), float(window[1])
    return centre - width / 2, centre + width / 2


def _check_pixels(subject: object, n: int, max_pixels: int) -> None:
    if n > max_pixels:
        raise ImageLoadError(subject, f"decompression bomb ({n} pixels, more than the cap of {max_pixels})")


# ----------------------------------------------------------------------------------------------- DICOM ----

# pip names of the packages behind pydicom's decoder plugins.
_PLUGIN_PACKAGES = {"gdcm": "python-gdcm", "pylibjpeg": "", "pyjpegls": "pyjpegls"}


def _load_dicom(
    p: Path, head: bytes, frame: int | None, max_pixels: int, window: tuple[float, float] | None
) -> Image.Image:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        # force only for a .dcm file without the 128-byte preamble (old ACR-NEMA style files)
        ds = pydicom.dcmread(p, force=head[128:132] != b"DICM")
    except InvalidDicomError as exc:
        raise ImageLoadError(p, f"not a DICOM file ({exc})") from None
    except Exception as exc:  # pydicom raises many types on damaged files (EOFError, struct.error, ...)
        raise ImageLoadError(
            p, f"unreadable DICOM file, truncated or damaged ({type(exc).__name__})"
        ) from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageLoadError(p, "DICOM file has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError):
        raise ImageLoadError(p, "DICOM file lacks Rows/Columns") from None
    _check_pixels(p, rows * cols, max_pixels)
    index = n_frames // 2 if frame is None else frame
    if not 0 <= index < n_frames:
        raise ImageLoadError(p, f"frame {frame} out of range (the file has {n_frames})")
    arr = _decode_dicom(p, ds, index if n_frames > 1 else None)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return _array_to_rgb(arr, p)
    return Image.fromarray(_dicom_gray_to_uint8(arr, ds, index, photometric, window), "L")


def _decode_dicom(p: Path, ds: Any, index: int | None) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        # index=: decode only the frame we need, not the whole multi-frame stack
        return pixel_array(ds, index=index)
    except (RuntimeError, NotImplementedError) as exc:
        decoder = None
        if uid is not None and uid.is_compressed:
            try:
                decoder = get_decoder(uid)
            except NotImplementedError:  # a syntax pydicom has no decoder interface for at all
                decoder = None
        name = getattr(uid, "name", str(uid))
        if decoder is not None:
            # either no plugin is installed, or the installed ones (e.g. Pillow for 12-bit JPEG) cannot do it
            install = _install_hint(decoder.missing_dependencies)
            have = ", ".join(decoder.available_plugins)
            why = (
                f"the installed decoders ({have}) cannot decode it"
                if have
                else "needs a decoder that is not installed"
            )
            raise ImageLoadError(p, f"compressed transfer syntax '{name}': {why}: {install}") from None
        if uid is not None and uid.is_compressed:
            raise ImageLoadError(
                p, f"compressed transfer syntax '{name}' is not supported by pydicom"
            ) from None
        raise ImageLoadError(p, f"cannot decode pixel data ({str(exc).splitlines()[0]})") from None
    except (ValueError, EOFError) as exc:
        msg = str(exc)
        if "less than expected" in msg or "truncated" in msg.lower() or isinstance(exc, EOFError):
            raise ImageLoadError(p, "truncated pixel data") from None
        raise ImageLoadError(p, f"cannot decode pixel data ({msg.splitlines()[0]})") from None


def _install_hint(missing: list[str]) -> str:
    """'pip install pylibjpeg pylibjpeg-libjpeg (or: python-gdcm; pyjpegls)' from pydicom's plugin messages."""
    options = []
    for line in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        plugin, _, needs = line.partition(" - requires ")
        pkgs = [re.split(r"[<>=!~ ]", req.strip(), maxsplit=1)[0] for req in needs.split(" and ")]
        pkgs = [_PLUGIN_PACKAGES.get(pk, pk) or pk for pk in pkgs if pk and pk != "numpy"]
        pkgs = ["python-gdcm" if pk == "gdcm" else pk for pk in pkgs]
        if pkgs:
            options.append((plugin.strip() != "pylibjpeg", " ".join(pkgs)))
    if not options:
        return "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
    options.sort()  # pylibjpeg first: it covers every JPEG family
    first, *rest = (o for _, o in options)
    return f"pip install {first}" + (f" (or: {'; '.join(rest)})" if rest else "")


def _frame_item(ds: Any, index: int, sequence: str) -> Any | None:
    """The per-frame or shared functional group item ``sequence`` of an enhanced multi-frame file."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > i and sequence in seq[i] and len(seq[i][sequence].value):
            return seq[i][sequence].value[0]
    return None


def _dicom_gray_to_uint8(
    arr: np.ndarray, ds: Any, index: int, photometric: str, window: tuple[float, float] | None
) -> np.ndarray:
    # Modality LUT: slope/intercept from the dataset, or from the functional groups of enhanced files.
    transform = _frame_item(ds, index, "PixelValueTransformationSequence") or ds
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        arr = apply_modality_lut(arr, ds)
    else:
        slope = float(transform.get("RescaleSlope", 1) or 1)
        intercept = float(transform.get("RescaleIntercept", 0) or 0)
        if slope != 1 or intercept != 0:
            arr = arr.astype(np.float32)
            if slope != 1:
                arr *= slope
            if intercept != 0:
                arr += intercept
    voi = _frame_item(ds, index, "FrameVOILUTSequence") or ds
    if window is not None:
        out = arr
        lo, hi = _explicit_window(window)
    elif ds.get("VOILUTSequence"):
        from pydicom.pixels import apply_voi

        lut_item = ds.VOILUTSequence[0]
        lut_data = lut_item.LUTData
        if isinstance(lut_data, bytes):
            lut_values = np.frombuffer(
                lut_data, dtype="<u2" if ds.is_little_endian in (True, None) else ">u2"
            )
        else:
            lut_values = np.asarray(lut_data)
        out = apply_voi(np.rint(arr).astype(np.int64) if arr.dtype.kind == "f" else arr, ds, index=0)
        lo, hi = float(lut_values.min()), float(lut_values.max())
    else:
        lo, hi = _dicom_window(voi)
        out = arr
        if lo is None:
            lo, hi = _percentile_window(arr)
    gray = _window(out, lo, hi)
    if photometric == "MONOCHROME1":  # MONOCHROME1: low values are white
        np.subtract(255, gray, out=gray)
    return gray


def _dicom_window(item: Any) -> tuple[float | None, float]:
    """(low, high) of the first window centre/width (DICOM PS3.3 C.11.2.1.2), or (None, 0) if absent."""
    centre, width = item.get("WindowCenter"), item.get("WindowWidth")
    if centre is None or width is None:
        return None, 0.0
    try:
        c = float(centre[0] if _is_multi(centre) else centre)
        w = float(width[0] if _is_multi(width) else width)
    except (TypeError, ValueError, IndexError):
        return None, 0.0
    if w <= 0:
        return None, 0.0
    if str(item.get("VOILUTFunction", "LINEAR")).upper() == "LINEAR_EXACT":
        return c - w / 2, c + w / 2
    # LINEAR: the standard's half-pixel offsets (SIGMOID is approximated by the same linear ramp)
    return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2


def _is_multi(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")


# ----------------------------------------------------------------------------------------------- NIfTI ----


def _load_nifti(
    p: Path,
    frame: int | None,
    axis: int | None,
    slice_index: int | None,
    max_pixels: int,
    window: tuple[float, float] | None,
) -> Image.Image:
    import nibabel as nib

    try:
        img = nib.load(p)
        shape = tuple(int(s) for s in img.shape)
        ornt = nib.orientations.io_orientation(img.affine)
    except Exception as exc:  # nibabel raises ImageFileError, ValueError, EOFError, gzip errors ...
        raise ImageLoadError(
            p, f"unreadable NIfTI file ({type(exc).__name__}: {exc})".split("\n")[0]
        ) from None
    if len(shape) not in (2, 3, 4) or (len(shape) == 4 and shape[3] < 1):
        raise ImageLoadError(p, f"unsupported NIfTI shape {shape}")
    axis = 2 if axis is None else axis
    if axis not in (0, 1, 2):
        raise ImageLoadError(p, f"axis must be 0, 1 or 2, not {axis}")
    index: list[Any] = [slice(None)] * len(shape)
    if len(shape) == 4:
        vol = shape[3] // 2 if frame is None else frame
        if not 0 <= vol < shape[3]:
            raise ImageLoadError(p, f"frame {frame} out of range (the volume has {shape[3]})")
        index[3] = vol
    kept = [0, 1]
    if len(shape) > 2:
        # the voxel axis that runs along the requested world axis (RAS), and its direction
        v = int(np.flatnonzero(ornt[:3, 0] == axis)[0]) if axis in ornt[:3, 0] else axis
        n = shape[v]
        k = n // 2 if slice_index is None else slice_index
        if not 0 <= k < n:
            raise ImageLoadError(p, f"slice {slice_index} out of range (axis {axis} has {n})")
        index[v] = k if ornt[v, 1] > 0 else n - 1 - k
        kept = [i for i in range(3) if i != v]
    _check_pixels(p, shape[kept[0]] * shape[kept[1]], max_pixels)
    try:
        # dataobj slicing reads only this slice from an uncompressed file and applies scl_slope/inter
        arr = np.asarray(img.dataobj[tuple(index)])
    except Exception as exc:
        raise ImageLoadError(p, f"truncated or damaged NIfTI data ({type(exc).__name__})") from None
    # orient the two kept voxel axes to RAS order, then show radiologically: rows = higher world axis
    # from high to low (anterior/superior up), columns = lower world axis from R to L.
    a, b = kept
    if ornt[a, 0] > ornt[b, 0]:
        arr, a, b = arr.T, b, a
    if ornt[a, 1] < 0:
        arr = arr[::-1, :]
    if ornt[b, 1] < 0:
        arr = arr[:, ::-1]
    arr = arr.T[::-1, ::-1]
    lo, hi = _explicit_window(window) if window else _percentile_window(arr)
    return Image.fromarray(_window(arr, lo, hi), "L")
