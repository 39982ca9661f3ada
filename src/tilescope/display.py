"""Any scene as 8-bit RGB for a person to look at: brightfield RGB as it is; other scenes (16-bit,
fluorescence channels, a grey channel) composited, each channel through its display window
(low, high: linear to 0..1; the file's display settings where stored, else percentiles) and
coloured with its channel colour, the colours added. What the
openslide drop-in, Deep Zoom, the CLI's thumbnails and a notebook show."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import numpy as np

if TYPE_CHECKING:
    from .model import Scene

# colours of channels the file gives none: one channel grey; else blue, green, red (DAPI, FITC,
# TRITC order), then magenta, cyan, yellow, white
PALETTE = ("#0000FF", "#00FF00", "#FF0000", "#FF00FF", "#00FFFF", "#FFFF00", "#FFFFFF")
PREVIEW = 512  # longest side of the low-resolution read display windows are estimated from
PERCENTILES = (0.1, 99.9)  # of that read, per channel: the window where the file stores none


def is_plain_rgb(scene: Scene, channels: Sequence[int] | None = None) -> bool:
    """Whether a read of ``channels`` (default: the image channels) is already what is shown:
    three (or one with alpha four) 8-bit channels of a brightfield scene."""
    n = len(channels) if channels is not None else scene.image_channels
    return scene.dtype == np.uint8 and n in (3, 4) and scene.background != 0


def colors(scene: Scene, channels: Sequence[int]) -> np.ndarray:
    """(n, 3) float RGB in 0..1 of ``channels``: the file's colours, else the palette's."""
    if len(channels) == 1 and scene.channel_colors[channels[0]] is None:
        return np.ones((1, 3))
    out = []
    for i, c in enumerate(channels):
        hexa = scene.channel_colors[c] or PALETTE[i % len(PALETTE)]
        out.append([int(hexa[k:k + 2], 16) / 255 for k in (1, 3, 5)])
    return np.asarray(out)


def windows(scene: Scene, channels: Sequence[int], z: int = 0, t: int = 0) -> np.ndarray:
    """(n, 2) display windows (low, high) of ``channels``: the file's own (``channel_info``'s
    ``window``, where the format stores display settings: CZI), else the 0.1th and 99.9th
    percentiles of a low-resolution read of plane (z, t) (8-bit channels: 0..255)."""
    stored = [scene.channel_info[c].get("window") for c in channels]
    a = None
    if not all(stored):
        w, h = scene.size
        a = scene.read(size=(PREVIEW, 0) if w >= h else (0, PREVIEW), channels=list(channels), z=z, t=t)
    out = []
    for i, c in enumerate(channels):
        window = stored[i]
        if window:
            lo, hi = cast(tuple, window)
            out.append((float(lo), float(hi)))
            continue
        assert a is not None
        if scene.channel_dtypes[c] == np.uint8:
            out.append((0.0, 255.0))
            continue
        with np.errstate(invalid="ignore"):  # 1-bit, float with NaN or infinities: still a window
            lo, hi = np.nanpercentile(a[..., i].astype(np.float64), PERCENTILES)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            lo, hi = 0.0, 1.0
        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1))
    return np.asarray(out)


def composite(a: np.ndarray, rgb: np.ndarray, window: np.ndarray) -> np.ndarray:
    """(h, w, n) samples -> (h, w, 3) uint8: each channel windowed to 0..1, times its colour,
    summed and clipped."""
    lo, hi = window[:, 0], window[:, 1]
    scaled = np.nan_to_num(np.clip((a.astype(np.float32) - lo) / (hi - lo), 0, 1), nan=0.0)
    return np.clip(np.rint(scaled @ rgb.astype(np.float32) * 255), 0, 255).astype(np.uint8)


class Display:
    """How one scene is shown: its channels' colours and windows, estimated once."""

    def __init__(self, scene: Scene, channels: Sequence[int] | None = None, z: int = 0, t: int = 0):
        self.channels = list(range(scene.image_channels)) if channels is None else list(channels)
        self.plain = is_plain_rgb(scene, self.channels)
        if not self.plain:
            self.rgb = colors(scene, self.channels)
            self.window = windows(scene, self.channels, z, t)

    def __call__(self, a: np.ndarray) -> np.ndarray:
        """Pixels of this scene's channels (h, w, n) as 8-bit RGB (h, w, 3)."""
        return a[..., :3] if self.plain else composite(a, self.rgb, self.window)
