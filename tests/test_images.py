"""training.images.load_medical_image: every format path and every bad-input case."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import pydicom.data  # noqa: E402
import pytest  # noqa: E402
from data_fixtures import png_bomb  # noqa: E402
from nibabel.testing import data_path as NIB_DATA  # noqa: E402
from PIL import Image  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402

from training.errors import MedVQAUserError  # noqa: E402
from training.images import ImageLoadError, load_medical_image  # noqa: E402

DCM = Path(pydicom.data.__file__).parent / "test_files"  # local files only: get_testdata_file may download


def gray(im: Image.Image) -> np.ndarray:
    assert im.mode == "RGB"
    a = np.asarray(im)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0]


# ------------------------------------------------------------------------------------------ Pillow formats ----


_STORABLE = {"png": "L RGB RGBA P LA 1", "jpeg": "L RGB CMYK", "tiff": "L RGB RGBA P LA CMYK 1"}


@pytest.mark.parametrize(("fmt", "mode"), [(f, m) for f, modes in _STORABLE.items() for m in modes.split()])
def test_8bit_modes_load_as_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    im = Image.new("RGB", (12, 9), (200, 40, 90)).convert(mode)
    p = tmp_path / f"x.{fmt}"
    im.save(p)
    out = load_medical_image(p)
    assert out.mode == "RGB" and out.size == (12, 9)


def test_rgb_png_is_returned_without_copy_and_exact(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (10, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    assert (np.asarray(load_medical_image(tmp_path / "a.png")) == arr).all()


def test_rgba_transparent_pixels_become_black(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., :3] = 255
    arr[0, 0, 3] = 255  # one opaque white pixel, the rest transparent white
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_medical_image(tmp_path / "a.png"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path: Path) -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    im.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_medical_image(tmp_path / "p.png"))[0, 0].tolist() == [250, 10, 10]


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16bit_gray_gets_percentile_window(tmp_path: Path, fmt: str) -> None:
    arr = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / f"a.{fmt}")
    g = gray(load_medical_image(tmp_path / f"a.{fmt}"))
    assert g.min() == 0 and g.max() == 255 and g[0, 0] < g[32, 32] < g[-1, -1]


def test_float_tiff_and_explicit_window(tmp_path: Path) -> None:
    arr = np.linspace(-1000, 1000, 100).reshape(10, 10).astype(np.float32)
    Image.fromarray(arr, "F").save(tmp_path / "f.tif")
    g = gray(load_medical_image(tmp_path / "f.tif", window=(0, 200)))
    assert g[0, 0] == 0 and g[-1, -1] == 255 and 0 < g[5, 0] < 255  # values near 0 fall inside the window


def test_multipage_tiff_frame(tmp_path: Path) -> None:
    pages = [Image.new("L", (5, 5), v) for v in (10, 200)]
    pages[0].save(tmp_path / "m.tif", save_all=True, append_images=pages[1:])
    assert gray(load_medical_image(tmp_path / "m.tif"))[0, 0] == 10
    assert gray(load_medical_image(tmp_path / "m.tif", frame=1))[0, 0] == 200
    with pytest.raises(ImageLoadError, match="frame 5 out of range"):
        load_medical_image(tmp_path / "m.tif", frame=5)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (20, 10), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    im.save(tmp_path / "r.jpg", exif=exif)
    assert load_medical_image(tmp_path / "r.jpg").size == (10, 20)


def test_pil_image_and_numpy_inputs() -> None:
    assert load_medical_image(Image.new("L", (3, 4))).size == (3, 4)
    assert load_medical_image(np.zeros((4, 3, 3), np.uint8)).size == (3, 4)
    assert gray(load_medical_image(np.arange(16, dtype=np.int16).reshape(4, 4))).max() == 255
    with pytest.raises(ImageLoadError, match="unsupported array shape"):
        load_medical_image(np.zeros((2, 2, 2, 2)))


# ----------------------------------------------------------------------------------------------- bad input ----


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no such file"):
        load_medical_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty file") as err:
        load_medical_image(tmp_path / "empty.png")
    assert str(tmp_path / "empty.png") in str(err.value) and isinstance(err.value, MedVQAUserError)
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_medical_image(tmp_path)


def test_text_file_named_png(tmp_path: Path) -> None:
    (tmp_path / "t.png").write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="holds text"):
        load_medical_image(tmp_path / "t.png")
    (tmp_path / "b.png").write_bytes(b"\x00\x01binary junk" * 10)
    with pytest.raises(ImageLoadError, match="unknown format"):
        load_medical_image(tmp_path / "b.png")


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_truncated_image(tmp_path: Path, fmt: str) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / f"a.{fmt}")
    data = (tmp_path / f"a.{fmt}").read_bytes()
    (tmp_path / f"a.{fmt}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_medical_image(tmp_path / f"a.{fmt}")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bombs(tmp_path: Path) -> None:
    # over our cap (100 M) but under Pillow's own error limit: our guard, from the header alone
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_medical_image(png_bomb(tmp_path / "a.png", 20_000, 6_000))
    # far over Pillow's limit: Pillow refuses at open, reported the same way
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_medical_image(png_bomb(tmp_path / "b.png", 100_000, 100_000))
    Image.new("L", (20, 20)).save(tmp_path / "c.png")
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_medical_image(tmp_path / "c.png", max_pixels=399)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_medical_image(DCM / "CT_small.dcm", max_pixels=128 * 128 - 1)


# --------------------------------------------------------------------------------------------------- DICOM ----


def test_ct_rescale_and_explicit_window_in_hounsfield_units() -> None:
    ds = pydicom.dcmread(DCM / "CT_small.dcm")
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    g = gray(load_medical_image(DCM / "CT_small.dcm", window=(40, 400)))
    expected = np.clip((hu - (40 - 200)) * 255 / 400, 0, 255).astype(np.uint8)
    assert np.abs(g.astype(int) - expected).max() <= 1


def test_ct_without_window_uses_percentiles() -> None:
    g = gray(load_medical_image(DCM / "CT_small.dcm"))  # CT_small has no window in the file
    assert g.shape == (128, 128) and g.min() == 0 and g.max() == 255
    assert 0.002 < (g == 255).mean() < 0.02  # about 0.5 % clipped at the top


def test_window_from_file() -> None:
    ds = pydicom.dcmread(DCM / "MR_small.dcm")
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    raw = ds.pixel_array.astype(float)
    g = gray(load_medical_image(DCM / "MR_small.dcm"))
    assert (g[raw <= c - w / 2 - 1] == 0).all() and (g[raw >= c + w / 2] == 255).all()


def _with(tmp_path: Path, name: str, edit) -> Path:
    ds = pydicom.dcmread(DCM / name)
    edit(ds)
    out = tmp_path / f"edited_{name}"
    ds.save_as(out)
    return out


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    base = gray(load_medical_image(DCM / "CT_small.dcm", window=(0, 2000)))
    p = _with(tmp_path, "CT_small.dcm", lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    assert (gray(load_medical_image(p, window=(0, 2000))) == 255 - base).all()
    # and a real MONOCHROME1 computed radiograph from pydicom's DICOMDIR test set
    cr = DCM / "dicomdirtests" / "77654033" / "CR1" / "6154"
    assert load_medical_image(cr).size == (16, 16)


def test_voi_lut_sequence(tmp_path: Path) -> None:
    def add_lut(ds: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 12]
        item.add_new(0x00283006, "US", [min(4095, v * 4) for v in range(4096)])  # LUT Data: saturates at 1024
        ds.VOILUTSequence = Sequence([item])
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1

    p = _with(tmp_path, "CT_small.dcm", add_lut)
    raw = pydicom.dcmread(p).pixel_array.astype(int)
    g = gray(load_medical_image(p))
    assert (g[raw >= 1024] == 255).all()
    lo = raw < 1000
    assert np.abs(g[lo].astype(int) - (raw[lo] * 4 * 255 // 4095)).max() <= 1


def test_enhanced_functional_group_window(tmp_path: Path) -> None:
    def add_groups(ds: Dataset) -> None:
        voi, pvt, shared = Dataset(), Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = 1000, 200
        pvt.RescaleSlope, pvt.RescaleIntercept = 1, 0
        shared.FrameVOILUTSequence = Sequence([voi])
        shared.PixelValueTransformationSequence = Sequence([pvt])
        ds.SharedFunctionalGroupsSequence = Sequence([shared])
        del ds.RescaleSlope, ds.RescaleIntercept

    p = _with(tmp_path, "CT_small.dcm", add_groups)
    raw = pydicom.dcmread(p).pixel_array
    g = gray(load_medical_image(p))
    assert (g[raw < 899] == 0).all() and (g[raw > 1100] == 255).all()


def test_multiframe_middle_default_and_chosen_frame() -> None:
    path = DCM / "examples_ybr_color.dcm"  # 30 frames, YBR_FULL_422 JPEG baseline
    frames = pydicom.dcmread(path).pixel_array
    middle, first = np.asarray(load_medical_image(path)), np.asarray(load_medical_image(path, frame=0))
    assert (
        np.abs(middle.astype(int) - frames[15]).mean() < 1
        and np.abs(first.astype(int) - frames[0]).mean() < 1
    )
    with pytest.raises(ImageLoadError, match="frame 30 out of range"):
        load_medical_image(path, frame=30)


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("examples_palette.dcm", (800, 350)),  # PALETTE COLOR
        ("examples_rgb_color.dcm", (320, 240)),  # RGB
        ("examples_jpeg2k.dcm", (640, 480)),  # JPEG 2000 through Pillow, YBR_RCT
        ("693_J2KI.dcm", (512, 512)),  # JPEG 2000 CT
        ("MR_small_RLE.dcm", (64, 64)),  # RLE
        ("MR_small_bigendian.dcm", (64, 64)),  # big endian
        ("SC_rgb_rle_16bit.dcm", (100, 100)),  # 16-bit colour
        ("image_dfl.dcm", (512, 512)),  # deflated transfer syntax
    ],
)
def test_dicom_variants(name: str, size: tuple[int, int]) -> None:
    im = load_medical_image(DCM / name)
    assert im.mode == "RGB" and im.size == size


def test_palette_dicom_is_colour() -> None:
    a = np.asarray(load_medical_image(DCM / "examples_palette.dcm")).astype(int)
    assert (a[..., 0] != a[..., 2]).any()


def test_missing_decoder_names_package() -> None:
    with pytest.raises(ImageLoadError, match=r"JPEG-LS.*pip install pylibjpeg pylibjpeg-libjpeg"):
        load_medical_image(DCM / "MR_small_jpeg_ls_lossless.dcm")
    with pytest.raises(ImageLoadError, match=r"installed decoders \(pillow\) cannot decode.*pip install"):
        load_medical_image(DCM / "JPGExtended.dcm")  # 12-bit JPEG: Pillow is installed but cannot


def test_dicom_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no pixel data"):
        load_medical_image(DCM / "rtplan.dcm")
    with pytest.raises(ImageLoadError, match="truncated pixel data"):
        load_medical_image(DCM / "MR_truncated.dcm")
    data = (DCM / "CT_small.dcm").read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_medical_image(tmp_path / "half.dcm")
    (tmp_path / "text.dcm").write_text("hello")
    with pytest.raises(ImageLoadError):
        load_medical_image(tmp_path / "text.dcm")


def test_no_patient_field_in_errors() -> None:
    ds = pydicom.dcmread(DCM / "MR_truncated.dcm", stop_before_pixels=True)
    with pytest.raises(ImageLoadError) as err:
        load_medical_image(DCM / "MR_truncated.dcm")
    for field in ("PatientName", "PatientID", "PatientBirthDate"):
        value = str(ds.get(field) or "")
        assert not value or value not in str(err.value)


# --------------------------------------------------------------------------------------------------- NIfTI ----


def test_nifti_middle_slice_axes_and_frames() -> None:
    anat = Path(NIB_DATA) / "anatomical.nii"  # 33 x 41 x 25, RAS
    assert load_medical_image(anat).size == (33, 41)
    assert load_medical_image(anat, axis=1).size == (33, 25)
    assert load_medical_image(anat, axis=0).size == (41, 25)
    assert load_medical_image(anat, slice_index=0).size == (33, 41)
    with pytest.raises(ImageLoadError, match="slice 25 out of range"):
        load_medical_image(anat, slice_index=25)
    with pytest.raises(ImageLoadError, match="axis must be"):
        load_medical_image(anat, axis=3)
    epi = Path(NIB_DATA) / "example4d.nii.gz"  # 4-D
    a, b = np.asarray(load_medical_image(epi, frame=0)), np.asarray(load_medical_image(epi, frame=1))
    assert a.shape == b.shape and not (a == b).all()
    with pytest.raises(ImageLoadError, match="frame 2 out of range"):
        load_medical_image(epi, frame=2)


@pytest.mark.parametrize("flip_x", [False, True])
def test_nifti_orientation_is_radiological(tmp_path: Path, flip_x: bool) -> None:
    data = np.zeros((10, 12, 5), np.int16)
    affine = np.eye(4)
    # a marker at the patient's right (+x in RAS), posterior (low y), middle slice
    if flip_x:  # LAS storage: voxel x runs right-to-left; the same world point lies at voxel 0
        affine[0, 0] = -1
        data[0, 0, 2] = 1000
    else:
        data[9, 0, 2] = 1000
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "v.nii.gz")
    g = gray(load_medical_image(tmp_path / "v.nii.gz"))
    assert g.shape == (12, 10)
    # radiological: patient right on image left (column 0), anterior up so posterior is the last row
    assert g[11, 0] == 255 and g.sum() == 255


def test_truncated_nifti(tmp_path: Path) -> None:
    data = (Path(NIB_DATA) / "example4d.nii.gz").read_bytes()
    (tmp_path / "t.nii.gz").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="NIfTI"):
        load_medical_image(tmp_path / "t.nii.gz")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti header" * 30)
    with pytest.raises(ImageLoadError, match="NIfTI"):
        load_medical_image(tmp_path / "junk.nii")
