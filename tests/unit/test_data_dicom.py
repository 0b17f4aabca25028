"""DICOM series -> HU volume: written slice by slice here with known HU and positions, then read
back. Expected values come from the numbers written, never from the reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from fedvox.client.volume import DataError, read_volume
from tests.ctdata import series_positions, write_series

# an oblique series: rows along +x, columns tilted 20 degrees from +y towards +z
ANGLE = np.deg2rad(20.0)
OBLIQUE = (1.0, 0.0, 0.0, 0.0, float(np.cos(ANGLE)), float(np.sin(ANGLE)))
NORMAL = np.cross(OBLIQUE[:3], OBLIQUE[3:])


def ramp(rows: int = 6, cols: int = 5, slices: int = 4) -> np.ndarray:
    """Distinct HU per voxel: 100*slice + 10*row + col - 1000 (rows, columns, slices)."""
    r, c, k = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(slices), indexing="ij")
    return (100 * k + 10 * r + c - 1000).astype(np.float64)


def lps_to_ras(point: np.ndarray) -> np.ndarray:
    return np.array([-point[0], -point[1], point[2]])


def test_hu_and_geometry_of_an_oblique_shuffled_series(tmp_path: Path) -> None:
    hu = ramp()
    origin, step, spacing = (-10.0, -20.0, 30.0), 2.5 * NORMAL, (0.7, 0.4)  # (rows, columns) mm
    write_series(tmp_path, hu, origin=origin, step=step, orientation=OBLIQUE, spacing=spacing)
    volume = read_volume(tmp_path)
    # array axes: i = column index, j = row index, k = slice
    assert volume.array.shape == (5, 6, 4)
    np.testing.assert_array_equal(volume.array, hu.transpose(1, 0, 2))
    row_dir, col_dir = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    positions = series_positions(origin, step, 4)
    for i, j, k in [(0, 0, 0), (4, 0, 0), (0, 5, 0), (3, 2, 3)]:
        lps = positions[k] + i * spacing[1] * row_dir + j * spacing[0] * col_dir
        np.testing.assert_allclose(volume.affine @ [i, j, k, 1], [*lps_to_ras(lps), 1], atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.4, 0.7, 2.5), atol=1e-6)


@pytest.mark.parametrize(
    ("slope", "intercept", "signed"),
    [(1.0, -1024.0, True), (1.0, -2048.0, False), (2.0, -2048.0, False), (0.5, 0.0, True)],
)
def test_rescale_and_pixel_representation(
    tmp_path: Path, slope: float, intercept: float, signed: bool
) -> None:
    hu = 2 * ramp()  # even HU: representable with a slope of 2
    write_series(tmp_path, hu, slope=slope, intercept=intercept, signed=signed)
    np.testing.assert_array_equal(read_volume(tmp_path).array, hu.transpose(1, 0, 2))


def test_each_slice_uses_its_own_rescale(tmp_path: Path) -> None:
    hu = 2 * ramp()
    paths = write_series(tmp_path, hu, shuffle_seed=None)
    ds = pydicom.dcmread(paths[2])  # rewrite slice 2: stored values halved, slope 2
    ds.RescaleSlope = "2"
    ds.PixelData = ((hu[:, :, 2] + 1024) / 2).astype(np.int16).tobytes()
    ds.save_as(paths[2])
    np.testing.assert_array_equal(read_volume(tmp_path).array, hu.transpose(1, 0, 2))


def test_pixel_padding_becomes_air(tmp_path: Path) -> None:
    hu = ramp()
    hu[0, 0, :] = -3024  # stored -2000: outside the reconstruction circle
    paths = write_series(tmp_path, hu, shuffle_seed=None)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.add_new(0x00280120, "SS", -2000)  # PixelPaddingValue
        ds.save_as(path)
    volume = read_volume(tmp_path)
    assert (volume.array[0, 0, :] == -1024).all()
    assert volume.array[1, 0, 0] == hu[0, 1, 0]


def test_gantry_tilt_keeps_the_sheared_step(tmp_path: Path) -> None:
    hu = ramp()
    step = np.array([0.0, 0.8, 2.5])  # each slice also moves 0.8 mm along y
    write_series(tmp_path, hu, step=step)
    volume = read_volume(tmp_path)
    np.testing.assert_allclose(volume.affine[:3, 2], lps_to_ras(step), atol=1e-6)


def test_a_single_slice_takes_its_thickness(tmp_path: Path) -> None:
    write_series(tmp_path, ramp(slices=1))
    volume = read_volume(tmp_path)
    assert volume.array.shape == (5, 6, 1)
    assert volume.spacing[2] == pytest.approx(5.0)  # SliceThickness written by the fixture


def test_missing_slice_is_refused_naming_the_neighbours(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp(slices=5))
    paths[2].unlink()
    with pytest.raises(DataError, match="1 missing slice") as info:
        read_volume(tmp_path)
    assert paths[1].name in str(info.value) and paths[3].name in str(info.value)
    assert "5.00 mm between" in str(info.value) and "2.50 mm apart" in str(info.value)


def test_an_unreadable_slice_file_is_named_with_the_gap(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp(slices=5))
    paths[2].write_bytes(b"\0" * 64)  # damaged beyond recognition
    with pytest.raises(
        DataError, match=rf"1 missing slice.*\(1 other file\(s\) skipped, e\.g\. {paths[2].name}\)"
    ):
        read_volume(tmp_path)


def test_duplicate_position_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp())
    ds = pydicom.dcmread(paths[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "copy.dcm")
    with pytest.raises(DataError, match="two slices at the same position"):
        read_volume(tmp_path)


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp(slices=5))
    ds = pydicom.dcmread(paths[2])
    ds.ImagePositionPatient = [-10.0, -20.0, 30.0 + 2 * 2.5 + 1.0]  # 1 mm out of place
    ds.save_as(paths[2])
    with pytest.raises(DataError, match="uneven slice spacing"):
        read_volume(tmp_path)


def test_mixed_series_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "a", ramp(), series_uid="1.2.3.1")
    write_series(tmp_path / "b", ramp(), series_uid="1.2.3.2", origin=(0, 0, 100))
    with pytest.raises(
        DataError, match=r"mixed series, 2 SeriesInstanceUIDs: 1\.2\.3\.\d \(4 files"
    ):
        read_volume(tmp_path)


def test_slices_of_different_sizes_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "a", ramp(), series_uid="1.2.3.9")
    write_series(tmp_path / "b", ramp(rows=8, slices=1), series_uid="1.2.3.9", origin=(0, 0, 90))
    with pytest.raises(DataError, match=r"slices differ in Rows: .*IM0000\.dcm has 8, most have 6"):
        read_volume(tmp_path)


def test_other_modalities_are_refused(tmp_path: Path) -> None:
    write_series(tmp_path, ramp(), modality="MR")
    with pytest.raises(DataError, match=r"modality MR \(4 files\), not CT"):
        read_volume(tmp_path)


def test_a_folder_without_dicom_images(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no DICOM image files \(1 other file"):
        read_volume(tmp_path)


def test_missing_position_is_refused(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp())
    ds = pydicom.dcmread(paths[0])
    del ds.ImagePositionPatient
    ds.save_as(paths[0])
    with pytest.raises(DataError, match=f"{paths[0].name}: missing ImagePositionPatient"):
        read_volume(tmp_path)


@pytest.mark.parametrize("syntax", [pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless])
def test_compressed_slices_decode_to_the_same_hu(tmp_path: Path, syntax: pydicom.uid.UID) -> None:
    hu = ramp(rows=64, cols=48)  # JPEG 2000 needs room for its 6 resolution levels
    for path in write_series(tmp_path, hu):
        ds = pydicom.dcmread(path)
        ds.compress(syntax)  # RLE: pydicom itself; JPEG 2000: pylibjpeg-openjpeg
        ds.save_as(path)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_volume(tmp_path).array, hu.transpose(1, 0, 2))


def test_undecodable_pixel_data_names_the_file(tmp_path: Path) -> None:
    paths = write_series(tmp_path, ramp())
    ds = pydicom.dcmread(paths[1])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGExtended12Bit  # bytes are not JPEG at all
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg"])
    ds.save_as(paths[1])
    with pytest.raises(DataError, match=f"{paths[1]}: cannot decode the pixel data \\(JPEG Ext"):
        read_volume(tmp_path)
