"""Tissue masks: which parts of a scene hold tissue, from one low-resolution read (Otsu's threshold
on saturation for brightfield, on the brightest channel otherwise)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .model import Scene


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values: the split maximizing between-class variance."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 - m0 * total) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between))


@dataclass
class TissueMask:
    """A boolean tissue mask of a scene; ``scale`` is level-0 pixels per mask pixel.

    Method: the scene is read whole at a low resolution (longest side ``max_size``); brightfield
    images are thresholded on HSV saturation (stained tissue is coloured, glass is grey), other
    images on their brightest channel (scaled to 8 bits by its 99.9th percentile), with Otsu's
    threshold; pixels above it are tissue.
    """

    mask: np.ndarray
    scale: tuple[float, float]
    threshold: float

    def fraction(self, rect: Sequence[float]) -> float:
        """Tissue fraction of a level-0 rect (0 where the rect lies outside the scene)."""
        x, y, w, h = rect
        fx, fy = self.scale
        mh, mw = self.mask.shape
        x0, y0 = max(0, math.floor(x / fx)), max(0, math.floor(y / fy))
        x1, y1 = min(mw, math.ceil((x + w) / fx)), min(mh, math.ceil((y + h) / fy))
        if x1 <= x0 or y1 <= y0:
            return 0.0
        area = math.ceil((x + w) / fx) - math.floor(x / fx)
        area *= math.ceil((y + h) / fy) - math.floor(y / fy)
        return float(self._integral[y1, x1] - self._integral[y0, x1] - self._integral[y1, x0]
                     + self._integral[y0, x0]) / area

    def __post_init__(self) -> None:
        c = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        c[1:, 1:] = self.mask.cumsum(0).cumsum(1)
        self._integral = c


def tissue_mask(scene: Scene, max_size: int = 1024) -> TissueMask:
    """The scene's tissue mask from one read whose longest side is ``max_size`` (see TissueMask)."""
    w, h = scene.size
    size = (max_size, 0) if w >= h else (0, max_size)
    img = scene.read(size=size)
    if scene.background and img.shape[-1] >= 3 and img.dtype == np.uint8:
        rgb = img[..., :3].astype(np.int16)
        mx, mn = rgb.max(-1), rgb.min(-1)
        value = np.where(mx > 0, (mx - mn) * 255 // np.maximum(mx, 1), 0).astype(np.uint8)
    else:
        v = img.max(-1).astype(np.float64)
        top = np.percentile(v, 99.9) or 1.0
        value = np.clip(v * 255.0 / top, 0, 255).astype(np.uint8)
    thr = otsu(value)
    oh, ow = img.shape[:2]
    return TissueMask(value > thr, (w / ow, h / oh), thr)
