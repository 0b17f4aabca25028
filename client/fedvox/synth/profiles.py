"""Scanner/site profiles: what differs between hospitals in the synthetic federation.

A profile only describes acquisition and case mix; the anatomy itself comes from the phantom.
Spacing is given at the reference resolution (``REFERENCE_SIZE`` voxels across a ``FOV_MM`` field
of view) and is scaled by ``REFERENCE_SIZE / size`` when another ``size`` is requested, so the
per-site ratios (thick slices, finer in-plane pixels) survive at any resolution.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FOV_MM = 200.0
REFERENCE_SIZE = 64
REFERENCE_SPACING_MM = FOV_MM / REFERENCE_SIZE

Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition and case-mix parameters of one site.

    ``noise_sigma`` (HU, white Gaussian), ``hu_offset`` (HU, calibration bias) and ``blur_sigma_mm``
    (reconstruction kernel, Gaussian sigma in mm) act on the image only, never on the label.
    ``spacing`` is (x, y, z) in mm at ``REFERENCE_SIZE``; see :meth:`grid_spacing`.
    ``lesion_prevalence`` is the target fraction of cases with at least one lesion.
    """

    name: str
    hu_offset: float = 0.0
    noise_sigma: float = 0.0
    blur_sigma_mm: float = 0.0
    spacing: Spacing = (REFERENCE_SPACING_MM, REFERENCE_SPACING_MM, REFERENCE_SPACING_MM)
    lesion_prevalence: float = 0.5
    lesion_radius_mm: tuple[float, float] = (6.0, 14.0)

    def __post_init__(self) -> None:
        # The name becomes a directory and a seed component, so keep it path-safe.
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"SiteProfile.name must be a plain directory name, got {self.name!r}")
        if self.noise_sigma < 0 or self.blur_sigma_mm < 0:
            raise ValueError("SiteProfile.noise_sigma and blur_sigma_mm must be >= 0")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"SiteProfile.spacing must be three positive mm, got {self.spacing}")
        if not 0.0 <= self.lesion_prevalence <= 1.0:
            raise ValueError("SiteProfile.lesion_prevalence must be within [0, 1]")
        low, high = self.lesion_radius_mm
        if not 0 < low <= high:
            raise ValueError("SiteProfile.lesion_radius_mm must be (min, max) with 0 < min <= max")

    def grid_spacing(self, size: int) -> Spacing:
        """Voxel spacing in mm actually used when generating at resolution ``size``."""
        scale = REFERENCE_SIZE / size
        x, y, z = self.spacing
        return (x * scale, y * scale, z * scale)

    def to_json(self) -> dict[str, object]:
        """Plain JSON-ready dict of the fields (tuples become lists)."""
        fields = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def site_name(index: int) -> str:
    """Spreadsheet-style site names: 0 -> site-a, 25 -> site-z, 26 -> site-aa, 27 -> site-ab."""
    if index < 0:
        raise ValueError(f"site index must be >= 0, got {index}")
    letters: list[str] = []
    n = index + 1
    while n > 0:
        n, rem = divmod(n - 1, 26)
        letters.append(chr(ord("a") + rem))
    return "site-" + "".join(reversed(letters))


# Weyl sequences (fractional parts of i * irrational) spread any number of sites evenly over each
# parameter range without a random generator, and decorrelate the parameters from each other.
_WEYL_STEPS = (
    0.6180339887,
    0.4142135624,
    0.7320508076,
    0.2360679775,
    0.7182818285,
    0.1415926536,
    0.6457513111,
)


def _weyl(index: int, dimension: int) -> float:
    return (0.5 + index * _WEYL_STEPS[dimension]) % 1.0


def _lerp(low: float, high: float, t: float) -> float:
    return round(low + (high - low) * t, 3)


def default_profiles(n_sites: int) -> list[SiteProfile]:
    """Deterministic, deliberately non-IID profiles named site-a, site-b, ...

    Every third site (site-c, site-f, ...) is a thick-slice scanner with 1.6x z spacing.
    """
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    profiles = []
    for i in range(n_sites):
        in_plane = REFERENCE_SPACING_MM * _lerp(0.85, 1.25, _weyl(i, 3))
        z_factor = 1.6 if i % 3 == 2 else 1.0
        min_radius = _lerp(7.0, 11.0, _weyl(i, 5))
        profiles.append(
            SiteProfile(
                name=site_name(i),
                # Whole-HU offsets shift every stored (rounded) voxel by exactly the offset.
                hu_offset=float(round(_lerp(-10.0, 15.0, _weyl(i, 0)))),
                noise_sigma=_lerp(3.0, 15.0, _weyl(i, 1)),
                blur_sigma_mm=_lerp(0.3, 2.5, _weyl(i, 2)),
                spacing=(round(in_plane, 3), round(in_plane, 3), round(in_plane * z_factor, 3)),
                lesion_prevalence=_lerp(0.25, 0.85, _weyl(i, 4)),
                lesion_radius_mm=(min_radius, round(min_radius + _lerp(5.0, 12.0, _weyl(i, 6)), 3)),
            )
        )
    return profiles


def iid_profiles(n_sites: int) -> list[SiteProfile]:
    """``n_sites`` copies of one mid-range profile that differ only by name (an IID control)."""
    if n_sites < 1:
        raise ValueError(f"n_sites must be >= 1, got {n_sites}")
    shared = SiteProfile(
        name=site_name(0),
        noise_sigma=12.0,
        blur_sigma_mm=1.0,
        lesion_prevalence=0.6,
        lesion_radius_mm=(6.0, 14.0),
    )
    return [dataclasses.replace(shared, name=site_name(i)) for i in range(n_sites)]


# Scenario profiles for `fedvox compare`: each isolates one kind of heterogeneity on top of the IID
# control's mid-range scanner and case mix (see docs/compare-readme-section.md).


def _spread(index: int, n_sites: int, shift: int = 0) -> float:
    """Site `index`'s position in [0, 1] when `n_sites` are spread evenly over a range, rotated
    by `shift` so that different parameters do not all rise together from site to site."""
    if n_sites == 1:
        return 0.5
    return ((index + shift) % n_sites) / (n_sites - 1)


def scanner_shift_profiles(n_sites: int) -> list[SiteProfile]:
    """Feature shift: every site has its own scanner, the same case mix as :func:`iid_profiles`.

    Across the sites the HU calibration offset spans -20..+20 HU, the noise 3..20 HU, the blur
    0.3..2.5 mm and the in-plane spacing 0.85..1.25 x the reference, each parameter rotated
    against the others; every third site (site-c, ...) has 1.6x thick slices."""
    base = iid_profiles(n_sites)
    profiles = []
    for i, shared in enumerate(base):
        in_plane = REFERENCE_SPACING_MM * _lerp(0.85, 1.25, _spread(i, n_sites, 3 * n_sites - 1))
        z_factor = 1.6 if i % 3 == 2 else 1.0
        profiles.append(
            dataclasses.replace(
                shared,
                hu_offset=float(round(_lerp(-20.0, 20.0, _spread(i, n_sites)))),
                noise_sigma=_lerp(3.0, 20.0, _spread(i, n_sites, 1)),
                blur_sigma_mm=_lerp(0.3, 2.5, _spread(i, n_sites, 2)),
                spacing=(round(in_plane, 3), round(in_plane, 3), round(in_plane * z_factor, 3)),
            )
        )
    return profiles


def prevalence_shift_profiles(n_sites: int) -> list[SiteProfile]:
    """Label skew: one scanner (the IID control's), but the share of lesion cases spans
    0.2..0.9 across the sites and the lesion radius range moves from 5..11 mm to 12..18 mm,
    rotated against the prevalence."""
    profiles = []
    for i, shared in enumerate(iid_profiles(n_sites)):
        low = _lerp(5.0, 12.0, _spread(i, n_sites, 1))
        profiles.append(
            dataclasses.replace(
                shared,
                lesion_prevalence=_lerp(0.2, 0.9, _spread(i, n_sites)),
                lesion_radius_mm=(low, round(low + 6.0, 3)),
            )
        )
    return profiles


def mixed_profiles(n_sites: int) -> list[SiteProfile]:
    """Both shifts at once: :func:`scanner_shift_profiles`' scanners with
    :func:`prevalence_shift_profiles`' case mix (quantity skew comes from the site sizes)."""
    return [
        dataclasses.replace(
            scanner,
            lesion_prevalence=cases.lesion_prevalence,
            lesion_radius_mm=cases.lesion_radius_mm,
        )
        for scanner, cases in zip(
            scanner_shift_profiles(n_sites), prevalence_shift_profiles(n_sites), strict=True
        )
    ]
