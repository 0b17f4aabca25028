"""One 3-D volume in world coordinates, read from NIfTI or a DICOM series.

Every reader returns the same thing: a float32 array indexed (i, j, k) and the 4x4 affine that maps
those indices to RAS millimetres (NIfTI's convention; MONAI's MetaTensor uses it too). Images come
out in Hounsfield units, labels as their stored values. Any failure is a DataError naming the file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import numpy.typing as npt
from nibabel.filebasedimages import ImageFileError
from nibabel.orientations import aff2axcodes, inv_ornt_aff, io_orientation

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DataError(ValueError):
    """A problem with a site's data; the message names the file."""


@dataclass(frozen=True)
class Volume:
    array: npt.NDArray[np.float32]  # (i, j, k)
    affine: npt.NDArray[np.float64]  # (i, j, k, 1) -> RAS mm
    source: str  # the file or series folder it came from, for messages

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j and k (lengths of the affine's columns)."""
        x, y, z = np.linalg.norm(self.affine[:3, :3], axis=0).tolist()
        return (x, y, z)

    @property
    def ras_axes(self) -> tuple[int, int, int]:
        """The array axes that run closest to R, A and S (for reporting in RAS order)."""
        world = io_orientation(self.affine)[:, 0]  # type: ignore[no-untyped-call]
        r, a, s = (int(i) for i in np.argsort(world))
        return (r, a, s)

    def canonical_grid(self) -> tuple[tuple[int, ...], npt.NDArray[np.float64]]:
        """Shape and affine after flipping and permuting the axes to RAS, as MONAI's
        Orientationd does (no resampling): two volumes that match here line up in training."""
        ornt = io_orientation(self.affine)  # type: ignore[no-untyped-call]
        shape = tuple(self.array.shape[i] for i in self.ras_axes)
        affine = self.affine @ inv_ornt_aff(ornt, self.array.shape)  # type: ignore[no-untyped-call]
        return shape, np.asarray(affine, dtype=np.float64)

    @property
    def axcodes(self) -> str:
        """Where each array axis points, e.g. "RAS" or "LPS"."""
        return "".join(str(c) for c in aff2axcodes(self.affine))  # type: ignore[no-untyped-call]


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: Path) -> Volume:
    """The voxel values with NIfTI's scl_slope/scl_inter applied, as float32."""
    try:
        image = nib.load(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise DataError(f"{path}: not a NIfTI image ({type(image).__name__})")
        # get_fdata reads (and for .gz decompresses) everything: a truncated file fails here
        data = np.asarray(image.get_fdata(dtype=np.float32))
        affine = np.asarray(image.affine, dtype=np.float64)
    # nibabel surfaces damage as whichever error the layer below raised
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error, MemoryError) as exc:
        raise DataError(
            f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{path}: expected one 3-D volume, got shape {data.shape}")
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(f"{path}: the NIfTI header has no usable affine (voxel-to-world matrix)")
    return Volume(data, affine, str(path))


def read_volume(path: Path) -> Volume:
    """A NIfTI file, a DICOM series folder, or a single DICOM file."""
    if path.is_dir():
        from fedvox.client.dicom import read_series

        return read_series(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if is_nifti(path):
        return read_nifti(path)
    from fedvox.client.dicom import read_series

    return read_series(path)
