"""Analytic head phantom in physical millimetres, sampled at voxel centres.

The anatomy of a case is drawn once from its random stream, independently of the voxel grid, and
then rendered on whatever grid the site uses; two sites with different spacing therefore see the
same head sampled differently, as with real scanners. Coordinates: RAS+ world millimetres with the
volume centre at (0, 0, 0); the head frame is the world frame rotated and shifted a little per
subject.

Layers inward from the head surface: skull (outer/inner tables denser than the diploe), a CSF film
(subarachnoid space), a cortical grey-matter ribbon whose thickness follows a smooth random field,
then white matter with grey islands (deep nuclei) where another field is high. Lateral and third
ventricles are ellipsoids scaled per subject. Haemorrhages are rough ellipsoids, sometimes two
merged blobs, labelled only inside the skull's inner table.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from enum import IntEnum, StrEnum

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from fedvox.synth.profiles import FOV_MM, SiteProfile, Spacing

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.intp]
Coords = tuple[FloatArray, FloatArray, FloatArray]

HU_AIR = -1000.0
# Stored CT is 12-bit: values below -1024 or above 3071 are clipped by the scanner.
HU_STORED_RANGE = (-1024, 3071)


class Tissue(IntEnum):
    """Voxel codes of the tissue map (the label is ``tissue == LESION``)."""

    AIR = 0
    BONE = 1
    CSF = 2
    GREY = 3
    WHITE = 4
    LESION = 5


class Split(StrEnum):
    """Dataset split of a case; the value is used in case names and seeds."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


# Noise-free HU of each tissue is clipped to these ranges.
HU_RANGES: dict[Tissue, tuple[float, float]] = {
    Tissue.BONE: (700.0, 1500.0),
    Tissue.CSF: (0.0, 15.0),
    Tissue.GREY: (35.0, 45.0),
    Tissue.WHITE: (20.0, 30.0),
    Tissue.LESION: (50.0, 90.0),
}
# (mean, amplitude of the smooth texture field) for the tissues with a flat profile.
_SOFT_TISSUE_HU: dict[Tissue, tuple[float, float]] = {
    Tissue.CSF: (7.0, 3.0),
    Tissue.GREY: (40.0, 2.0),
    Tissue.WHITE: (25.0, 2.0),
}
_LESION_TEXTURE_HU = 6.0

# Domain tags keep the seed streams of cases and of split plans from ever colliding.
_STREAM_CASE = 1
_STREAM_PLAN = 2


def stable_key(text: str) -> int:
    """Process-independent 32-bit key of a string (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def seed_sequence(
    seed: int, site: str, split: Split, index: int | None = None
) -> np.random.SeedSequence:
    """Seed of one case (``index`` given) or of a split's lesion plan (``index`` None)."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    split_key = stable_key(split.value)
    if index is None:
        return np.random.SeedSequence([_STREAM_PLAN, seed, stable_key(site), split_key])
    return np.random.SeedSequence([_STREAM_CASE, seed, stable_key(site), split_key, index])


@dataclass(frozen=True)
class Grid:
    """Voxel grid covering ``FOV_MM`` with the volume centre at world (0, 0, 0)."""

    shape: tuple[int, int, int]
    spacing: Spacing

    @classmethod
    def for_profile(cls, profile: SiteProfile, size: int) -> Grid:
        spacing = profile.grid_spacing(size)
        nx, ny, nz = (max(1, round(FOV_MM / s)) for s in spacing)
        return cls(shape=(nx, ny, nz), spacing=spacing)

    @property
    def affine(self) -> FloatArray:
        """Voxel index -> RAS+ mm; diagonal, so index axes are x (R), y (A), z (S)."""
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = [-(n - 1) / 2 * s for n, s in zip(self.shape, self.spacing, strict=True)]
        return affine

    def world_axes(self) -> Coords:
        """World mm of voxel centres as three arrays that broadcast to ``shape``."""
        origin = self.affine[:3, 3]
        x, y, z = (
            o + s * np.arange(n, dtype=np.float64)
            for o, s, n in zip(origin, self.spacing, self.shape, strict=True)
        )
        return x[:, None, None], y[None, :, None], z[None, None, :]


@dataclass(frozen=True)
class SmoothField:
    """Sum of random plane waves: a smooth ~N(0, 1) field defined at any point in mm."""

    wavevectors: FloatArray  # (K, 3) radians per mm
    phases: FloatArray  # (K,)

    @classmethod
    def draw(
        cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], n_waves: int = 6
    ) -> SmoothField:
        directions = rng.standard_normal((n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = rng.uniform(*wavelength_mm, size=n_waves)
        wavevectors = directions * (2 * np.pi / wavelengths)[:, None]
        return cls(wavevectors=wavevectors, phases=rng.uniform(0, 2 * np.pi, size=n_waves))

    def __call__(self, q: Coords) -> FloatArray:
        total: FloatArray = np.zeros(np.broadcast_shapes(*(a.shape for a in q)))
        for (kx, ky, kz), phase in zip(self.wavevectors, self.phases, strict=True):
            total += np.cos(kx * q[0] + ky * q[1] + kz * q[2] + phase)
        # Random phases give each wave variance 1/2, so this scaling makes the field unit-variance.
        return total * math.sqrt(2.0 / len(self.phases))

    @property
    def bound(self) -> float:
        """Largest possible absolute value of the field."""
        return math.sqrt(2.0 * len(self.phases))


@dataclass(frozen=True)
class Ellipsoid:
    """Rotated ellipsoid, optionally with a surface roughened by a smooth field."""

    centre_mm: FloatArray  # (3,) in the head frame
    rotation: FloatArray  # (3, 3), columns are the ellipsoid axes
    semi_axes_mm: FloatArray  # (3,)
    roughness: SmoothField | None = None
    roughness_amplitude: float = 0.25

    def contains(self, q: Coords) -> BoolArray:
        v = _to_frame(q, self.rotation, self.centre_mm)
        rho2 = sum((vk / s) ** 2 for vk, s in zip(v, self.semi_axes_mm, strict=True))
        if self.roughness is None:
            return np.asarray(rho2 < 1.0, dtype=np.bool_)
        limit = 1.0 + self.roughness_amplitude * self.roughness(q)
        return np.asarray(rho2 < limit * limit, dtype=np.bool_)

    @property
    def bounding_radius_mm(self) -> float:
        radius = float(self.semi_axes_mm.max())
        if self.roughness is None:
            return radius
        return radius * (1.0 + self.roughness_amplitude * self.roughness.bound)


@dataclass(frozen=True)
class Lesion:
    """One haemorrhage: the union of its blobs, with one mean density."""

    blobs: tuple[Ellipsoid, ...]
    base_hu: float


@dataclass(frozen=True)
class Anatomy:
    """Grid-independent description of one subject's head (lengths in mm, head frame)."""

    rotation: FloatArray
    shift_mm: FloatArray
    semi_axes_mm: FloatArray
    shape_coeffs: FloatArray  # low-order deviations of the skull from an ellipsoid
    skull_mm: float
    subarachnoid_mm: float
    cortex_mm: float
    ventricles: tuple[Ellipsoid, ...]
    texture: SmoothField
    folding: SmoothField
    deep_grey: SmoothField

    @property
    def intracranial_semi_axes_mm(self) -> FloatArray:
        return self.semi_axes_mm - self.skull_mm - self.subarachnoid_mm


@dataclass(frozen=True)
class Phantom:
    """Noise-free rendering of a case: HU, tissue codes and the lesion label, all on one grid."""

    hu: npt.NDArray[np.float32]
    tissue: npt.NDArray[np.uint8]
    label: npt.NDArray[np.uint8]


@dataclass(frozen=True)
class SynthCase:
    """One generated case: the stored image plus the ground truth it was made from."""

    image: npt.NDArray[np.int16]  # HU as a scanner stores it: blurred, noisy, offset, rounded
    label: npt.NDArray[np.uint8]
    clean_hu: npt.NDArray[np.float32]
    tissue: npt.NDArray[np.uint8]
    grid: Grid


def _to_frame(q: Coords, rotation: FloatArray, origin: FloatArray) -> Coords:
    """Coordinates of points ``q`` in the frame whose axes are the columns of ``rotation``."""
    d = (q[0] - origin[0], q[1] - origin[1], q[2] - origin[2])
    x, y, z = (
        rotation[0, k] * d[0] + rotation[1, k] * d[1] + rotation[2, k] * d[2] for k in range(3)
    )
    return x, y, z


def _quaternion_matrix(quaternion: FloatArray) -> FloatArray:
    w, x, y, z = quaternion / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _random_rotation(rng: np.random.Generator) -> FloatArray:
    # A normalised 4-D Gaussian is a uniformly random unit quaternion.
    return _quaternion_matrix(rng.standard_normal(4))


def _small_rotation(rng: np.random.Generator, max_degrees: float) -> FloatArray:
    axis = rng.standard_normal(3)
    half_angle = np.radians(rng.uniform(-max_degrees, max_degrees)) / 2
    axis_part = np.sin(half_angle) * axis / np.linalg.norm(axis)
    return _quaternion_matrix(np.array([np.cos(half_angle), *axis_part]))


def _draw_ventricles(rng: np.random.Generator) -> tuple[Ellipsoid, ...]:
    scale = rng.uniform(0.6, 1.8)  # enlarged ventricles mimic atrophy / hydrocephalus
    lateral = [
        Ellipsoid(
            centre_mm=np.array([side * (5.0 + 4.0 * scale), 4.0, 14.0]),
            # Splayed ~9 degrees apart about the S-I axis, like the frontal horns.
            rotation=_quaternion_matrix(np.array([1.0, 0.0, 0.0, side * 0.08])),
            semi_axes_mm=np.array([2.5 + 4.0 * scale, 18.0 + 4.0 * scale, 3.0 + 4.0 * scale]),
        )
        for side in (-1.0, 1.0)
    ]
    third = Ellipsoid(
        centre_mm=np.array([0.0, -2.0, 0.0]),
        rotation=np.eye(3),
        semi_axes_mm=np.array([0.8 + 1.2 * scale, 10.0, 7.0]),
    )
    return (*lateral, third)


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
    """Random subject: head 130-180 mm across, small pose changes, varied ventricles and cortex."""
    # Semi-axes (R-L, A-P, S-I) keep the worst-case head inside the 200 mm field of view.
    return Anatomy(
        rotation=_small_rotation(rng, max_degrees=6.0),
        shift_mm=rng.uniform(-3.0, 3.0, size=3),
        semi_axes_mm=np.array([rng.uniform(65, 72), rng.uniform(78, 86), rng.uniform(66, 74)]),
        shape_coeffs=rng.uniform(-0.02, 0.02, size=5),
        skull_mm=float(rng.uniform(5.0, 8.0)),
        subarachnoid_mm=float(rng.uniform(1.0, 3.0)),
        cortex_mm=float(rng.uniform(2.5, 4.0)),
        ventricles=_draw_ventricles(rng),
        texture=SmoothField.draw(rng, (8.0, 30.0)),
        folding=SmoothField.draw(rng, (10.0, 35.0)),
        deep_grey=SmoothField.draw(rng, (20.0, 50.0)),
    )


def _random_direction(rng: np.random.Generator) -> FloatArray:
    v = rng.standard_normal(3)
    return np.asarray(v / np.linalg.norm(v), dtype=np.float64)


def _draw_blob(rng: np.random.Generator, centre: FloatArray, radius: float) -> Ellipsoid:
    semi = radius * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.5, 0.9)])
    return Ellipsoid(
        centre_mm=centre,
        rotation=_random_rotation(rng),
        semi_axes_mm=semi,
        roughness=SmoothField.draw(rng, (1.5 * radius, 3.0 * radius)),
    )


def draw_lesion(
    rng: np.random.Generator, anatomy: Anatomy, radius_mm: tuple[float, float]
) -> Lesion:
    """A haemorrhage centred well inside the brain; one or, 35 % of the time, two merged blobs."""
    depth = rng.uniform() ** (1 / 3) * 0.65  # uniform in volume within 65 % of the brain radii
    centre = _random_direction(rng) * depth * anatomy.intracranial_semi_axes_mm
    radius = rng.uniform(*radius_mm)
    blobs = [_draw_blob(rng, centre, radius)]
    if rng.uniform() < 0.35:
        offset = _random_direction(rng) * radius * rng.uniform(0.6, 1.0)
        blobs.append(_draw_blob(rng, centre + offset, radius * rng.uniform(0.5, 0.8)))
    return Lesion(blobs=tuple(blobs), base_hu=float(rng.uniform(60.0, 80.0)))


def _depth_below_surface(q: Coords, anatomy: Anatomy) -> FloatArray:
    """Radial distance (mm) inward from the outer skull surface; negative outside the head."""
    r = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    u = [qk / np.maximum(r, 1e-6) for qk in q]
    c = anatomy.shape_coeffs
    deform = (
        1.0
        + c[0] * u[0] * u[1]
        + c[1] * u[1] * u[2]
        + c[2] * u[0] * u[2]
        + c[3] * (u[1] ** 2 - u[2] ** 2)
        + c[4] * u[1]
    )
    inverse_radius = (
        np.sqrt(sum((uk / s) ** 2 for uk, s in zip(u, anatomy.semi_axes_mm, strict=True))) * deform
    )
    # At the exact head centre u is 0; a huge surface radius there just means "deep inside".
    return np.asarray(1.0 / np.maximum(inverse_radius, 1e-9) - r, dtype=np.float64)


def _tissue_codes(q: Coords, depth: FloatArray, anatomy: Anatomy) -> npt.NDArray[np.uint8]:
    """Tissue of points already known to be inside the head (1-D arrays)."""
    folding = anatomy.folding(q)
    csf_end = anatomy.skull_mm + anatomy.subarachnoid_mm * np.clip(1.0 + 0.5 * folding, 0.3, None)
    cortex_end = csf_end + anatomy.cortex_mm * np.clip(1.0 + 0.35 * folding, 0.4, None)
    tissue = np.full(depth.shape, Tissue.WHITE, dtype=np.uint8)
    tissue[(depth < cortex_end) | (anatomy.deep_grey(q) > 1.0)] = Tissue.GREY
    in_ventricle = np.zeros(depth.shape, dtype=np.bool_)
    for ventricle in anatomy.ventricles:
        in_ventricle |= ventricle.contains(q)
    tissue[(depth < csf_end) | (in_ventricle & (depth >= cortex_end))] = Tissue.CSF
    tissue[depth < anatomy.skull_mm] = Tissue.BONE
    return tissue


def _lesion_ids(q: Coords, intracranial: BoolArray, lesions: tuple[Lesion, ...]) -> IndexArray:
    """Per point, 1 + index of the (last) lesion covering it, 0 where there is none."""
    ids = np.zeros(intracranial.shape, dtype=np.intp)
    for number, lesion in enumerate(lesions, start=1):
        for blob in lesion.blobs:
            # Only points near the blob are tested: the field evaluation is the costly part.
            d2 = sum((qk - ck) ** 2 for qk, ck in zip(q, blob.centre_mm, strict=True))
            near = np.flatnonzero((d2 < blob.bounding_radius_mm**2) & intracranial)
            inside = blob.contains((q[0][near], q[1][near], q[2][near]))
            ids[near[inside]] = number
    return ids


def _hu_values(
    tissue: npt.NDArray[np.uint8],
    depth: FloatArray,
    texture: FloatArray,
    lesion_ids: IndexArray,
    anatomy: Anatomy,
    lesions: tuple[Lesion, ...],
) -> FloatArray:
    hu = np.empty(tissue.shape)
    for code, (mean, amplitude) in _SOFT_TISSUE_HU.items():
        mask = tissue == code
        hu[mask] = mean + amplitude * texture[mask]
    # Compact outer/inner tables (~1450 HU) around a less dense diploe (~850 HU).
    bone = tissue == Tissue.BONE
    through = np.clip(depth[bone] / anatomy.skull_mm, 0.0, 1.0)
    hu[bone] = 1450.0 - 600.0 * np.sin(np.pi * through) + 40.0 * texture[bone]
    lesion = tissue == Tissue.LESION
    base = np.array([0.0, *(les.base_hu for les in lesions)])
    hu[lesion] = base[lesion_ids[lesion]] + _LESION_TEXTURE_HU * texture[lesion]
    for code, (low, high) in HU_RANGES.items():
        mask = tissue == code
        hu[mask] = np.clip(hu[mask], low, high)
    return hu


def render(anatomy: Anatomy, lesions: tuple[Lesion, ...], grid: Grid) -> Phantom:
    """Sample the phantom at the voxel centres of ``grid`` (no blur, noise or offset)."""
    q_full = _to_frame(grid.world_axes(), anatomy.rotation, anatomy.shift_mm)
    depth_full = _depth_below_surface(q_full, anatomy)
    head = depth_full >= 0
    # Everything below works on the head's voxels only, as 1-D arrays.
    q = (q_full[0][head], q_full[1][head], q_full[2][head])
    depth = depth_full[head]
    tissue = _tissue_codes(q, depth, anatomy)
    lesion_ids = _lesion_ids(q, depth >= anatomy.skull_mm, lesions)
    tissue[lesion_ids > 0] = Tissue.LESION
    hu = _hu_values(tissue, depth, anatomy.texture(q), lesion_ids, anatomy, lesions)

    hu_full = np.full(grid.shape, HU_AIR, dtype=np.float32)
    hu_full[head] = hu
    tissue_full = np.full(grid.shape, Tissue.AIR, dtype=np.uint8)
    tissue_full[head] = tissue
    label = (tissue_full == Tissue.LESION).astype(np.uint8)
    return Phantom(hu=hu_full, tissue=tissue_full, label=label)


def _phantom_with_lesions(
    rng: np.random.Generator, grid: Grid, radius_mm: tuple[float, float], has_lesion: bool
) -> Phantom:
    anatomy = draw_anatomy(rng)
    if not has_lesion:
        return render(anatomy, (), grid)
    # A lesion thinner than a voxel could fall between voxel centres and leave an empty label.
    floor = max(grid.spacing)
    radius = (max(radius_mm[0], floor), max(radius_mm[1], floor))
    count = 2 if rng.uniform() < 0.25 else 1
    for _ in range(100):
        lesions = tuple(draw_lesion(rng, anatomy, radius) for _ in range(count))
        phantom = render(anatomy, lesions, grid)
        if phantom.label.any():
            return phantom
    raise RuntimeError("could not place a lesion that covers any voxel centre")


def acquire(
    clean_hu: npt.NDArray[np.float32], grid: Grid, profile: SiteProfile, rng: np.random.Generator
) -> npt.NDArray[np.int16]:
    """Scanner model: reconstruction blur, white noise, calibration offset, int16 storage."""
    image = clean_hu.astype(np.float64)
    if profile.blur_sigma_mm > 0:
        sigma_voxels = [profile.blur_sigma_mm / s for s in grid.spacing]
        image = ndimage.gaussian_filter(image, sigma=sigma_voxels, mode="nearest")
    if profile.noise_sigma > 0:
        image += profile.noise_sigma * rng.standard_normal(grid.shape)
    image += profile.hu_offset
    return np.clip(np.rint(image), *HU_STORED_RANGE).astype(np.int16)


def synthesize_case(
    profile: SiteProfile, *, size: int, seed: int, split: Split, index: int, has_lesion: bool
) -> SynthCase:
    """Generate one case deterministically from (seed, site name, split, index).

    Anatomy and scanner noise use separate streams, so profiles that differ only in ``hu_offset``,
    ``noise_sigma`` or ``blur_sigma_mm`` give the same head and lesions, and the same noise pattern
    scaled by ``noise_sigma``.
    """
    grid = Grid.for_profile(profile, size)
    anatomy_seed, noise_seed = seed_sequence(seed, profile.name, split, index).spawn(2)
    phantom = _phantom_with_lesions(
        np.random.default_rng(anatomy_seed), grid, profile.lesion_radius_mm, has_lesion
    )
    image = acquire(phantom.hu, grid, profile, np.random.default_rng(noise_seed))
    return SynthCase(
        image=image, label=phantom.label, clean_hu=phantom.hu, tissue=phantom.tissue, grid=grid
    )
