"""The one medical image loader used everywhere: training, evaluation and ``medvqa ask``.

``load_medical_image(path)`` returns an RGB :class:`PIL.Image.Image` ready for the vision processor:

* PNG / JPEG / TIFF / BMP / GIF through Pillow: 8-bit gray, RGB, RGBA (composited on black), palette,
  CMYK; 16-bit and float gray get a percentile window (0.5-99.5 %), like DICOM without a window.  TIFFs that
  Pillow cannot open (float64 / float16 gray, 16-bit colour with extra samples ...) are read with tifffile,
  the TIFF reader scikit-image uses, and windowed the same way; complex-valued TIFFs are refused.
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
  default) along the fourth axis; percentile window.  RGB24 / RGBA32 volumes give a colour slice.
* An already open :class:`PIL.Image.Image` or a numpy array (H x W gray, H x W x 3 / 4 colour) is accepted too.

Bad input raises :class:`ImageLoadError` (a :class:`MedVQAUserError`) naming the path and the reason: missing
or empty file, a folder or a non-regular file (FIFO, device: never opened), truncated file, a file that is not an
image (e.g. text named ``.png``), a decompression bomb (more than ``max_pixels`` pixels in the 2-D image, checked
on the header before any pixel is decoded), an extreme aspect ratio (more than :data:`MAX_ASPECT_RATIO` : 1: the
processor resizes the short side to 224 px, so a 1 x 100000 strip would become 224 x 22 400 000 pixels), a PNG
text chunk over Pillow's 1 MB limit, a DICOM file without pixel data or with a missing / malformed pixel
attribute (BitsAllocated, palette or LUT data, a RescaleSlope that is not a number ...), a missing decoder, a
complex-valued NIfTI volume, a ``.nii.gz`` whose gzip stream fails its CRC anywhere (the whole stream is checked
before a slice is read) or holds more than its header declares, a volume over ``max_volume_bytes``, and volume
options (``axis`` / ``slice_index``) given for a 2-D image.  The loader's own warnings (Pillow's
DecompressionBombWarning, pydicom's and nibabel's value warnings) are silenced: the one error line is the report.

Speed matters (the loader is benchmarked against open_clip's ``Image.open(p).convert("RGB")``): an 8-bit RGB
file is returned as loaded, without a copy; windowing runs in float32 in place, and percentiles are taken on a
strided subsample of big images.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import warnings
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from training.errors import MedVQAUserError

DEFAULT_MAX_PIXELS = 100_000_000
"""Pixel cap of one 2-D image (frame / slice). Pillow's own bomb limit is 89 M (warning) / 179 M (error)."""

PERCENTILE_WINDOW = (0.5, 99.5)
"""Low / high percentiles of the fallback window for images without a window of their own."""

MAX_ASPECT_RATIO = 20
"""Longest / shortest side of an accepted image.  The processor resizes the short side to 224 px and crops the
centre square, so a 20:1 strip already loses 95 % of its width and becomes 224 x 4480 pixels before the crop;
beyond that the image is refused rather than resized (resizing a 1 x 100000 strip would need 224 x 22.4 M)."""

DEFAULT_MAX_VOLUME_BYTES = 2 << 30
"""Largest NIfTI data block (voxels x bytes per voxel) accepted: a 512 x 512 x 2000 int16 CT is 1 GiB.  The header
declares it, so a gzip bomb is refused before anything is decompressed."""

_GZIP_SLACK = 1 << 20  # bytes a .nii.gz stream may hold beyond what its header declares (writers' padding)
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
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
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
        max_volume_bytes: largest NIfTI data block accepted (gzip-bomb guard, checked on the header).

    Raises:
        ImageLoadError: the input cannot be read as an image; the message names the path and the reason.
    """
    with warnings.catch_warnings():
        # Pillow's DecompressionBombWarning, pydicom's invalid-value and nibabel's header warnings would add lines
        # to stderr before (or instead of) the one-line report; the guards below decide, the error says why.
        warnings.simplefilter("ignore")
        image = _load(
            path,
            frame=frame,
            axis=axis,
            slice_index=slice_index,
            window=window,
            max_pixels=max_pixels,
            max_volume_bytes=max_volume_bytes,
        )
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
    max_volume_bytes: int = DEFAULT_MAX_VOLUME_BYTES,
) -> Image.Image:
    """The loader proper: RGB, or 8-bit gray still in mode L (converted by the caller)."""
    if isinstance(path, Image.Image):
        _refuse_volume_options("<PIL image>", axis, slice_index)
        return _pil_to_rgb(path, "<PIL image>", frame, max_pixels, window)
    if isinstance(path, np.ndarray):
        _refuse_volume_options("<array>", axis, slice_index)
        if path.ndim < 2:
            raise ImageLoadError(
                "<array>", f"unsupported array shape {path.shape} (expected H x W or H x W x 3/4)"
            )
        _check_size("<array>", path.shape[1], path.shape[0], max_pixels)
        return _array_to_rgb(path, "<array>", window)
    if isinstance(path, str) and "\0" in path:
        raise ImageLoadError(repr(path), "path contains a NUL byte")
    p = Path(path)
    head = _read_head(p)
    name = p.name.lower()
    if head[128:132] == b"DICM" or p.suffix.lower() in _DICOM_SUFFIXES:
        _refuse_volume_options(p, axis, slice_index, "use frame for a multi-frame DICOM file")
        return _load_dicom(p, head, frame, max_pixels, window)
    if name.endswith(_NIFTI_SUFFIXES) or head[344:348] in (b"n+1\0", b"ni1\0"):
        return _load_nifti(p, head, frame, axis, slice_index, max_pixels, window, max_volume_bytes)
    _refuse_volume_options(p, axis, slice_index)
    return _load_pil(p, head, frame, max_pixels, window)


def _read_head(p: Path) -> bytes:
    """The first 352 bytes (enough for the DICOM and NIfTI magic) of a regular, non-empty file.

    A folder, FIFO, socket or device is refused from ``stat`` alone: opening a FIFO blocks until a writer
    comes, and a device such as ``/dev/zero`` never ends.
    """
    try:
        st = p.stat()  # follows symlinks: a link to /dev/zero is judged by what it points at
    except FileNotFoundError:
        raise ImageLoadError(p, "no such file") from None
    except (OSError, ValueError) as exc:  # ELOOP, EACCES, ENAMETOOLONG ...; ValueError: embedded NUL byte
        raise ImageLoadError(p, f"cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageLoadError(p, "is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(p, "not a regular file (FIFO, socket or device): refused without opening it")
    if st.st_size == 0:
        raise ImageLoadError(p, "empty file")
    try:
        with open(p, "rb") as fh:
            return fh.read(352)
    except OSError as exc:
        raise ImageLoadError(p, f"cannot read ({exc.strerror or exc})") from None


def _refuse_volume_options(
    subject: object, axis: int | None, slice_index: int | None, hint: str = ""
) -> None:
    """``axis`` / ``slice_index`` only mean something for a NIfTI volume; silently ignoring them would answer a
    question about a slice the user did not ask for."""
    if axis is not None or slice_index is not None:
        given = " and ".join(n for n, v in (("axis", axis), ("slice", slice_index)) if v is not None)
        raise ImageLoadError(
            subject,
            f"{given} only apply to NIfTI volumes, not to this 2-D image" + (f" ({hint})" if hint else ""),
        )


# --------------------------------------------------------------------------------------------- Pillow ----


def _load_pil(
    p: Path, head: bytes, frame: int | None, max_pixels: int, window: tuple[float, float] | None
) -> Image.Image:
    try:
        im = Image.open(p)
    except Image.DecompressionBombError:
        raise ImageLoadError(p, f"decompression bomb (more than {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        if head.startswith(_TIFF_MAGIC):
            return _load_tiff(p, frame, max_pixels, window)
        raise ImageLoadError(p, _not_an_image_reason(head)) from None
    except (OSError, SyntaxError, ValueError) as exc:
        # ValueError: e.g. a PNG zTXt / iTXt chunk that inflates past PngImagePlugin.MAX_TEXT_CHUNK (1 MB)
        raise ImageLoadError(p, f"unreadable image ({_pillow_reason(exc)})") from None
    with im:
        return _pil_to_rgb(im, p, frame, max_pixels, window)


def _pillow_reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "MAX_TEXT_CHUNK" in text or "Too much memory used in text chunks" in text:
        return "a PNG text chunk (tEXt/zTXt/iTXt) over Pillow's 1 MB limit: a text bomb"
    return text


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF


def _load_tiff(
    p: Path, frame: int | None, max_pixels: int, window: tuple[float, float] | None
) -> Image.Image:
    """TIFFs Pillow has no mode for (float64 / float16 gray, 16-bit colour ...), read with tifffile.

    tifffile comes with scikit-image; its page shape is known from the IFD, so the size guard runs before any
    pixel is decoded.
    """
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            n = len(tif.pages)
            index = 0 if frame is None else frame
            if not 0 <= index < n:
                raise ImageLoadError(p, f"frame {frame} out of range (the image has {n})")
            page = tif.pages[index]
            shape, dtype = tuple(page.shape), np.dtype(page.dtype)
            if len(shape) < 2:
                raise ImageLoadError(p, f"unsupported TIFF page shape {shape}")
            # tifffile puts samples last for contiguous pages and first for planar ones
            planar = len(shape) == 3 and shape[0] in (3, 4) and shape[2] not in (3, 4)
            h, w = (shape[1], shape[2]) if planar else (shape[0], shape[1])
            _check_size(p, w, h, max_pixels)
            if dtype.kind == "c":
                raise ImageLoadError(
                    p, "complex-valued TIFF (e.g. k-space or phase); save the magnitude instead"
                )
            if dtype.kind not in "uif":
                raise ImageLoadError(p, f"unsupported TIFF sample type {dtype}")
            arr = page.asarray()
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as exc:
        # ValueError also covers a compression that needs the optional imagecodecs package
        raise ImageLoadError(
            p, f"unreadable TIFF ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    if planar:
        arr = np.moveaxis(arr, 0, -1)
    return _array_to_rgb(arr, p, window)


def _pil_to_rgb(
    im: Image.Image,
    subject: object,
    frame: int | None,
    max_pixels: int,
    window: tuple[float, float] | None = None,
) -> Image.Image:
    if frame is not None:
        try:
            n = getattr(im, "n_frames", 1)
            if not 0 <= frame < n:
                raise ImageLoadError(subject, f"frame {frame} out of range (the image has {n})")
            im.seek(frame)
        except (OSError, EOFError, SyntaxError, ValueError) as exc:  # a damaged frame table
            raise ImageLoadError(
                subject, f"truncated or damaged image file ({_pillow_reason(exc)})"
            ) from None
    # Checked on the header size, before decoding anything.
    _check_size(subject, im.width, im.height, max_pixels)
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow words it "image file is truncated", "broken data stream", "unrecognized data stream" ...; a
        # text bomb after the image data also surfaces here, as ValueError
        reason = f"truncated or damaged image file ({_pillow_reason(exc)})"
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


def _check_size(subject: object, width: int, height: int, max_pixels: int) -> None:
    """Refuse, from the declared size alone, images that would cost more memory than they can be worth."""
    n = width * height
    if n > max_pixels:
        raise ImageLoadError(subject, f"decompression bomb ({n} pixels, more than the cap of {max_pixels})")
    if n == 0:
        raise ImageLoadError(subject, f"image has no pixels ({width} x {height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageLoadError(
            subject,
            f"extreme aspect ratio ({width} x {height}, more than {MAX_ASPECT_RATIO}:1): the model sees a "
            "224-px centre square of the short side, and resizing the strip would need far more memory",
        )


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
    if not any(k in ds and ds[k].value for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageLoadError(p, "DICOM file has no pixel data")
    _ensure_transfer_syntax(ds)
    _check_pixel_module(p, ds)
    rows, cols = int(_dicom_number(p, ds, "Rows")), int(_dicom_number(p, ds, "Columns"))
    n_frames = int(_dicom_number(p, ds, "NumberOfFrames", 1) or 1)
    _check_size(p, cols, rows, max_pixels)
    index = n_frames // 2 if frame is None else frame
    if not 0 <= index < n_frames:
        raise ImageLoadError(p, f"frame {frame} out of range (the file has {n_frames})")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        _require(p, ds, _PALETTE_LUT, "PALETTE COLOR image without its palette lookup tables")
    arr = _decode_dicom(p, ds, index if n_frames > 1 else None)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except (ValueError, IndexError, TypeError) as exc:  # descriptor and data disagree
            raise ImageLoadError(p, f"malformed palette lookup table ({_first_line(exc)})") from None
    if arr.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return _array_to_rgb(arr, p)
    return Image.fromarray(_dicom_gray_to_uint8(p, arr, ds, index, photometric, window), "L")


def _ensure_transfer_syntax(ds: Any) -> None:
    """Old ACR-NEMA style files have no file meta: record the encoding pydicom read the body with, which is
    how their pixels are stored (uncompressed), so that the decoder knows it too."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    implicit, little = getattr(ds, "original_encoding", (True, True))
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if implicit in (True, None):
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian


# The pixel module attributes pydicom needs to decode (PS3.3 C.7.6.3); checked up front so that a missing one is
# reported by name instead of surfacing as an AttributeError from inside the decoder.
_PIXEL_MODULE = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
)
_PALETTE_LUT = tuple(f"{c}PaletteColorLookupTableDescriptor" for c in ("Red", "Green", "Blue"))
_LUT_ITEM = ("LUTDescriptor", "LUTData")


def _check_pixel_module(p: Path, ds: Any) -> None:
    need = _PIXEL_MODULE if "PixelData" in ds else _PIXEL_MODULE[:4]  # float pixel data has no bit depths
    _require(p, ds, need, "DICOM pixel data without its pixel description")
    if (_dicom_number(p, ds, "SamplesPerPixel", 1) or 1) > 1:
        _require(p, ds, ("PlanarConfiguration",), "colour DICOM pixel data without its sample layout")


def _require(p: Path, item: Any, keywords: tuple[str, ...], what: str) -> None:
    missing = [k for k in keywords if _dicom_value(p, item, k) in (None, "")]
    if missing:
        raise ImageLoadError(p, f"{what}: missing {', '.join(missing)}")


def _dicom_value(p: Path, item: Any, keyword: str) -> Any:
    """The value of ``keyword`` or None; a value pydicom cannot even convert (e.g. a DS that reads "slope") is
    a malformed file, named by the attribute (never by its value: it could be a patient field)."""
    try:
        return item.get(keyword)
    except (ValueError, TypeError, OverflowError, KeyError):
        raise ImageLoadError(p, f"DICOM attribute {keyword} is malformed") from None


def _dicom_number(p: Path, item: Any, keyword: str, default: float | None = None) -> float | None:
    """A numeric attribute (the first value of a multi-valued one) as a finite float, or ``default``."""
    value = _dicom_value(p, item, keyword)
    if value is None or value == "":
        return default
    if _is_multi(value):
        if not len(value):
            return default
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ImageLoadError(p, f"DICOM attribute {keyword} is not a number") from None
    if not np.isfinite(number):
        raise ImageLoadError(p, f"DICOM attribute {keyword} is not a finite number")
    return number


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


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
    p: Path, arr: np.ndarray, ds: Any, index: int, photometric: str, window: tuple[float, float] | None
) -> np.ndarray:
    # Modality LUT: slope/intercept from the dataset, or from the functional groups of enhanced files.
    transform = _frame_item(ds, index, "PixelValueTransformationSequence") or ds
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        _require(p, ds.ModalityLUTSequence[0], _LUT_ITEM, "Modality LUT without its table")
        try:
            arr = apply_modality_lut(arr, ds)
        except (ValueError, IndexError, TypeError, KeyError) as exc:
            raise ImageLoadError(p, f"malformed Modality LUT ({_first_line(exc)})") from None
    else:
        slope = _dicom_number(p, transform, "RescaleSlope", 1) or 1
        intercept = _dicom_number(p, transform, "RescaleIntercept", 0) or 0
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
        _require(p, lut_item, _LUT_ITEM, "VOI LUT without its table")
        lut_data = lut_item.LUTData
        try:
            if isinstance(lut_data, bytes):
                lut_values = np.frombuffer(
                    lut_data[: len(lut_data) // 2 * 2],
                    dtype="<u2" if ds.is_little_endian in (True, None) else ">u2",
                )
            else:
                lut_values = np.asarray(lut_data, dtype=np.float64).reshape(-1)
            if lut_values.size == 0:
                raise ValueError("empty LUTData")
            out = apply_voi(np.rint(arr).astype(np.int64) if arr.dtype.kind == "f" else arr, ds, index=0)
        except (ValueError, IndexError, TypeError, KeyError) as exc:
            raise ImageLoadError(p, f"malformed VOI LUT ({_first_line(exc)})") from None
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
    # A window that is absent or malformed (not a number, not finite, width <= 0) is ignored: the percentile
    # window replaces it, as for files without one.
    try:
        centre, width = item.get("WindowCenter"), item.get("WindowWidth")
        if centre is None or width is None:
            return None, 0.0
        c = float(centre[0] if _is_multi(centre) else centre)
        w = float(width[0] if _is_multi(width) else width)
        function = str(item.get("VOILUTFunction", "LINEAR")).upper()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None, 0.0
    if not (np.isfinite(c) and np.isfinite(w)) or w <= 0:
        return None, 0.0
    if function == "LINEAR_EXACT":
        return c - w / 2, c + w / 2
    # LINEAR: the standard's half-pixel offsets (SIGMOID is approximated by the same linear ramp)
    return c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2


def _is_multi(value: Any) -> bool:
    return not isinstance(value, str | bytes) and hasattr(value, "__getitem__")


# ----------------------------------------------------------------------------------------------- NIfTI ----


def _load_nifti(
    p: Path,
    head: bytes,
    frame: int | None,
    axis: int | None,
    slice_index: int | None,
    max_pixels: int,
    window: tuple[float, float] | None,
    max_volume_bytes: int,
) -> Image.Image:
    import nibabel as nib

    try:
        img = nib.load(p)
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(img.get_data_dtype())
        ornt = nib.orientations.io_orientation(img.affine)
        offset = int(img.dataobj.offset)
    except Exception as exc:  # nibabel raises ImageFileError, ValueError, EOFError, gzip errors ...
        raise ImageLoadError(
            p, f"unreadable NIfTI file ({type(exc).__name__}: {exc})".split("\n")[0]
        ) from None
    if len(shape) not in (2, 3, 4) or (len(shape) == 4 and shape[3] < 1):
        raise ImageLoadError(p, f"unsupported NIfTI shape {shape}")
    if 0 in shape:
        raise ImageLoadError(p, f"NIfTI volume has an empty dimension (shape {shape})")
    if dtype.kind == "c":
        raise ImageLoadError(
            p, f"complex-valued NIfTI data ({dtype}: k-space or phase); save the magnitude instead"
        )
    if dtype.kind not in "uifb" and not dtype.names:
        raise ImageLoadError(p, f"unsupported NIfTI data type {dtype}")
    data_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if data_bytes > max_volume_bytes:
        raise ImageLoadError(
            p, f"NIfTI header declares {data_bytes} bytes of data, more than the cap of {max_volume_bytes}"
        )
    if head[:2] == b"\x1f\x8b":
        _check_gzip_stream(p, offset + data_bytes + _GZIP_SLACK)
    axis = 2 if axis is None else axis
    if axis not in (0, 1, 2):
        raise ImageLoadError(p, f"axis must be 0, 1 or 2, not {axis}")
    if len(shape) == 2 and slice_index is not None:
        raise ImageLoadError(p, "slice given, but this NIfTI file holds a single 2-D image")
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
    _check_size(p, shape[kept[0]], shape[kept[1]], max_pixels)
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
    if arr.dtype.names:  # RGB24 / RGBA32: a record of uint8 samples per voxel -> H x W x 3/4
        return _array_to_rgb(np.stack([arr[name] for name in arr.dtype.names[:4]], axis=-1), p)
    lo, hi = _explicit_window(window) if window else _percentile_window(arr)
    return Image.fromarray(_window(arr, lo, hi), "L")


def _check_gzip_stream(p: Path, limit: int) -> None:
    """Decompress the whole ``.nii.gz`` once, in 1 MiB pieces, so that gzip's CRC-32 and length trailer are
    checked: nibabel reads only up to the slice it needs, so damage elsewhere (or in the slice itself, past the
    point zlib notices) would otherwise go unseen, or show as a garbage slice.  Stops as soon as the stream is
    longer than the header declares (``limit``): a gzip bomb costs at most ``limit`` bytes of inflating, never
    memory."""
    total = 0
    try:
        with gzip.open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
                if total > limit:
                    raise ImageLoadError(
                        p, f"gzip stream holds more than the {limit} bytes its NIfTI header accounts for"
                    )
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
        raise ImageLoadError(
            p, f"corrupt or truncated gzip stream of a NIfTI file ({_first_line(exc)})"
        ) from None


# ------------------------------------------------------------------------------------ windows and info ----

CT_WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "soft tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
"""Common CT windows as ``(centre, width)`` in Hounsfield units, for the ``window=`` option of the loader."""


def ct_window(preset: str | None = None, *, level: float | None = None, width: float | None = None):
    """``(centre, width)`` for :func:`load_medical_image`: a named preset, a manual level/width, or None.

    ``None`` (no preset, no level/width) keeps the file's own window (DICOM) or the percentile window.

    Raises:
        MedVQAUserError: unknown preset, a level without a width (or the reverse), or a width <= 0.
    """
    if preset is not None:
        key = preset.strip().lower()
        if key not in CT_WINDOW_PRESETS:
            raise MedVQAUserError(preset, f"unknown window preset (one of: {', '.join(CT_WINDOW_PRESETS)})")
        return CT_WINDOW_PRESETS[key]
    if level is None and width is None:
        return None
    if level is None or width is None:
        raise MedVQAUserError("window", "give both a level (centre) and a width")
    if not width > 0:
        raise MedVQAUserError("window", f"the width must be positive, not {width}")
    return float(level), float(width)


class MedicalImageInfo(NamedTuple):
    """What a viewer needs to know about a file before showing it (read from headers, no pixels decoded).

    ``kind`` is ``"dicom"``, ``"nifti"`` or ``"image"``; ``modality`` the DICOM Modality (``"CT"``, ``"MR"`` ...)
    or None; ``depth`` the number of positions along the stack (DICOM frames, NIfTI slices along ``axis``, TIFF
    pages; 1 for a plain image) and ``depth_option`` the :func:`load_medical_image` keyword that picks one
    (``"frame"`` or ``"slice_index"``); ``windowable`` whether ``window=`` changes the picture (gray values
    beyond 8 bit: DICOM, NIfTI, 16-bit / float files).
    """

    kind: str
    modality: str | None
    depth: int
    depth_option: str
    windowable: bool


def medical_image_info(path: str | os.PathLike[str], *, axis: int | None = None) -> MedicalImageInfo:
    """Header facts of an image file (see :class:`MedicalImageInfo`); no patient field is read out.

    Raises:
        ImageLoadError: the file cannot be read; call :func:`load_medical_image` first for the precise reason.
    """
    p = Path(path)
    head = _read_head(p)  # the loader's checks: a regular, non-empty file
    name = p.name.lower()
    if head[128:132] == b"DICM" or p.suffix.lower() in _DICOM_SUFFIXES:
        import pydicom

        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, force=head[128:132] != b"DICM")
            frames = int(ds.get("NumberOfFrames") or 1)
        except Exception as exc:  # as in _load_dicom: pydicom raises many types on damaged files
            raise ImageLoadError(p, f"unreadable DICOM header ({type(exc).__name__})") from None
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        modality = str(ds.get("Modality") or "") or None
        return MedicalImageInfo("dicom", modality, frames, "frame", photometric.startswith("MONOCHROME"))
    if name.endswith(_NIFTI_SUFFIXES) or head[344:348] in (b"n+1\0", b"ni1\0"):
        import nibabel as nib

        try:
            img = nib.load(p)
            shape = tuple(int(s) for s in img.shape)
            ornt = nib.orientations.io_orientation(img.affine)
        except Exception as exc:  # as in _load_nifti
            raise ImageLoadError(p, f"unreadable NIfTI header ({type(exc).__name__})") from None
        axis = 2 if axis is None else axis
        depth = 1
        if len(shape) > 2:  # the voxel axis along world ``axis``, as in _load_nifti
            v = int(np.flatnonzero(ornt[:3, 0] == axis)[0]) if axis in ornt[:3, 0] else axis
            depth = shape[v]
        return MedicalImageInfo("nifti", None, depth, "slice_index", True)
    try:
        with Image.open(p) as im:
            frames = int(getattr(im, "n_frames", 1))
            windowable = im.mode in ("I;16", "I;16B", "I;16L", "I", "F")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        raise ImageLoadError(p, _not_an_image_reason(head)) from None
    return MedicalImageInfo("image", None, frames, "frame", windowable)
