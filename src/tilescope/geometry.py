"""Rects, output sizes, plane selections and level choice: the arithmetic of a request.

Conventions everywhere: rects are (x, y, w, h) in level-0 pixels from the scene's top-left, sizes
are (w, h), arrays are (h, w, c) row-major.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from .errors import InvalidRequestError

# what the public API takes (checked at run time by the functions below)
RectLike = Sequence[float] | None  # (x, y, w, h); None: the whole scene
SizeLike = Sequence[int] | None  # (w, h); a 0 keeps the aspect ratio; None: the rect's size
PlaneIndex = int | Sequence[int]  # a z or t index, or a (start, stop) range
Channels = int | str | Sequence[int | str] | None  # indices or names; None: the image channels

# A level may be used for a request up to this much coarser than asked, so rounding of level
# sizes (40001 px / 4 = 10000 px) does not push reads down to a 16x larger level.
LEVEL_TOLERANCE = 0.005


def _int(v: Any, what: str, where: str) -> int:
    if type(v) is int:  # the common case first: the checks below cost a µs per value
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise InvalidRequestError(f"{where}: {what} must be a finite number, got {v!r}")
    if isinstance(v, numbers.Integral):
        return int(v)
    if float(v).is_integer():
        return int(float(v))
    raise InvalidRequestError(f"{where}: {what} must be a whole number of pixels, got {v!r}")


def _real(v: Any, what: str, where: str) -> float:
    if type(v) in (int, float) and math.isfinite(v):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise InvalidRequestError(f"{where}: {what} must be a finite number, got {v!r}")
    return float(v)


def normalize_rect(rect: RectLike, full: tuple[int, int], where: str, integral: bool = True) -> tuple:
    """(x, y, w, h) with w, h > 0, as ints (or floats unless ``integral``); ``None`` is all of ``full``."""
    if rect is None:
        return (0, 0, *full)
    if not (type(rect) in (tuple, list) or isinstance(rect, Sequence)) or len(rect) != 4:
        raise InvalidRequestError(f"{where}: rect must be (x, y, w, h), got {rect!r}")
    conv = _int if integral else _real
    x, y, w, h = (conv(v, n, where) for v, n in zip(rect, ("x", "y", "width", "height"), strict=True))
    if w <= 0 or h <= 0:
        raise InvalidRequestError(f"{where}: rect {rect!r} has a width or height <= 0")
    return x, y, w, h


def resolve_size(size: SizeLike, rect_wh: tuple[float, float], where: str) -> tuple[int, int]:
    """Output (w, h): ``None`` is the rect's size, a 0 in one dimension keeps the aspect ratio."""
    w, h = rect_wh
    if size is None:
        return max(1, round(w)), max(1, round(h))
    if not isinstance(size, Sequence) or len(size) != 2:
        raise InvalidRequestError(f"{where}: size must be (w, h), got {size!r}")
    ow, oh = (_int(v, n, where) for v, n in zip(size, ("output width", "output height"), strict=True))
    if ow < 0 or oh < 0 or (ow == 0 and oh == 0):
        raise InvalidRequestError(f"{where}: size {size!r} must be positive (one 0 keeps the aspect)")
    if ow == 0:
        ow = max(1, round(w * oh / h))
    elif oh == 0:
        oh = max(1, round(h * ow / w))
    return ow, oh


def plane_indices(v: PlaneIndex, count: int, what: str, where: str) -> tuple[list[int], bool]:
    """An index, or a (start, stop) range, as (indices, is_range)."""
    if type(v) is int and 0 <= v < count:
        return [v], False
    if isinstance(v, Sequence) and not isinstance(v, str):
        if len(v) != 2:
            raise InvalidRequestError(f"{where}: {what} range must be (start, stop), got {v!r}")
        start, stop = (_int(i, what, where) for i in v)
        if not 0 <= start < stop <= count:
            raise InvalidRequestError(f"{where}: {what} range {v!r} is outside 0..{count}")
        return list(range(start, stop)), True
    i = _int(v, what, where)
    if not 0 <= i < count:
        raise InvalidRequestError(f"{where}: {what}={i} is outside 0..{count - 1}")
    return [i], False


def best_level(scales: Sequence[tuple[float, float]], ds: float) -> int:
    """Index of the coarsest level whose per-axis downsample does not exceed ``ds`` (with tolerance)."""
    limit = ds * (1 + LEVEL_TOLERANCE)
    best, best_s = 0, 0.0
    for i, (sx, sy) in enumerate(scales):
        s = max(sx, sy)
        if s <= limit and s > best_s:
            best, best_s = i, s
    return best
