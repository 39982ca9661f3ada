"""Scales and units: at what resolution, and in what unit, a region is given.

A *scale* is a resolution of a scene, named by exactly one of: a pyramid ``level``, an objective
``magnification``, micrometres per pixel ``mpp``, or a ``downsample`` from level 0. Its factor is
(fx, fy) level-0 pixels per pixel at that scale.

A *unit* says how a rect's numbers are read: ``"px"`` (level-0 pixels, the default everywhere),
``"um"``, ``"mm"``, ``"fraction"`` (of the scene's width and height), or a scale (pixels at that
scale: ``Scale(level=2)`` for level-2 pixels, ``Scale(magnification=10)`` for pixels at 10x).

Magnification: a scene's ``magnification`` is what the file says, or None. When the file gives
mpp but no magnification, :func:`native_magnification` derives it as ``10 / mpp`` (the usual
microscope convention: a 10x objective images 1 µm per pixel on a 10 µm camera pixel), snapped to
the nominal objective power within ``MAG_TOLERANCE`` (0.499 µm -> 20x, not 20.04x), and says so;
the scene's ``magnification`` attribute stays None. Magnifications are nominal: a requested one
within ``MAG_TOLERANCE`` of a level's reads that level's own pixels (``mpp`` requests are exact).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from .errors import InvalidRequestError

MAG_FROM_MPP = 10.0  # magnification = MAG_FROM_MPP / mpp where the file gives none
NOMINAL_MAGNIFICATIONS = (1.25, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 63.0, 100.0)  # objective powers
MAG_TOLERANCE = 0.05  # relative: how far a derived or requested magnification may be off nominal


@dataclass(frozen=True)
class Scale:
    """A resolution of a scene: exactly one field set; none set means level 0."""

    level: int | None = None
    magnification: float | None = None
    mpp: float | tuple[float, float] | None = None  # one value, or (x, y) as Scene.mpp is
    downsample: float | None = None

    def __post_init__(self) -> None:
        given = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if len(given) > 1:
            raise InvalidRequestError(
                f"a scale names one of level, magnification, mpp, downsample; got {given}")

        def positive(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for name in given:
            v = getattr(self, name)
            if name == "level":
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            elif name == "mpp" and isinstance(v, tuple | list):
                ok = len(v) == 2 and all(positive(c) for c in v)
            else:
                ok = positive(v)
            if not ok:
                raise InvalidRequestError(f"scale {name}={v!r} is not valid")


ScaleLike = Scale | dict[str, Any] | None  # a Scale, its fields as a dict, or None: level 0
Units = Literal["px", "um", "mm", "fraction"] | Scale | dict[str, Any] | None  # None: "px"


def as_scale(v: ScaleLike) -> Scale:
    """A Scale from a Scale, a dict such as ``{"magnification": 10}``, or None (level 0)."""
    if v is None:
        return Scale()
    if isinstance(v, Scale):
        return v
    if isinstance(v, dict):
        try:
            return Scale(**v)
        except TypeError:
            raise InvalidRequestError(f"unknown scale keys in {v!r}") from None
    raise InvalidRequestError(f"a scale is a Scale or a dict, got {v!r}")


@dataclass(frozen=True)
class Geometry:
    """What units and scales need of a scene (it builds one): its name in errors, level-0 size, mpp,
    level-0 magnification (stated or derived) and each level's (x, y) scale from level 0."""

    location: str
    size: tuple[int, int]
    mpp: tuple[float, float] | None
    magnification: float | None
    level_scales: tuple[tuple[float, float], ...]


def native_magnification(magnification: float | None, mpp: tuple[float, float] | None
                         ) -> tuple[float | None, str | None]:
    """(magnification of level 0, where it came from: "file", "mpp" or None) from what the file
    states."""
    if magnification:
        return magnification, "file"
    if mpp:
        mag = MAG_FROM_MPP / mpp[0]
        nominal = min(NOMINAL_MAGNIFICATIONS, key=lambda m: abs(math.log(mag / m)))
        return (nominal if abs(mag / nominal - 1) <= MAG_TOLERANCE else mag), "mpp"
    return None, None


def factor(g: Geometry, scale: ScaleLike) -> tuple[float, float]:
    """Level-0 pixels per pixel at ``scale``, per axis."""
    s = as_scale(scale)
    where = g.location
    if s.level is not None:
        if s.level >= len(g.level_scales):
            raise InvalidRequestError(f"{where}: level {s.level} is outside 0..{len(g.level_scales) - 1}")
        return g.level_scales[s.level]
    if s.magnification is not None:
        if g.magnification is None:
            raise InvalidRequestError(f"{where}: the file gives neither magnification nor mpp")
        f = g.magnification / s.magnification
        for sc in g.level_scales:  # nominal: a level's magnification within tolerance is that level
            if abs(f / sc[0] - 1) <= MAG_TOLERANCE:
                return sc
        return f, f
    if s.mpp is not None:
        if not g.mpp:
            raise InvalidRequestError(f"{where}: the file gives no pixel size (mpp)")
        mx, my = (s.mpp, s.mpp) if isinstance(s.mpp, int | float) else s.mpp
        return mx / g.mpp[0], my / g.mpp[1]
    if s.downsample is not None:
        return s.downsample, s.downsample
    return 1.0, 1.0


def unit_factor(g: Geometry, units: Units) -> tuple[float, float]:
    """Level-0 pixels per one of ``units``, per axis."""
    if units in ("px", None):
        return 1.0, 1.0
    if units in ("um", "mm"):
        if not g.mpp:
            raise InvalidRequestError(f"{g.location}: the file gives no pixel size (mpp) for {units!r} units")
        k = 1.0 if units == "um" else 1000.0
        return k / g.mpp[0], k / g.mpp[1]
    if units == "fraction":
        return float(g.size[0]), float(g.size[1])
    if isinstance(units, Scale | dict):
        return factor(g, units)
    raise InvalidRequestError(f"{g.location}: unknown units {units!r} (px, um, mm, fraction, or a Scale)")


def convert(g: Geometry, rect: Sequence[float], src: Units, dst: Units) -> tuple[float, float, float, float]:
    """A rect given in ``src`` units expressed in ``dst`` units."""
    ax, ay = unit_factor(g, src)
    bx, by = unit_factor(g, dst)
    x, y, w, h = rect
    return x * ax / bx, y * ay / by, w * ax / bx, h * ay / by
