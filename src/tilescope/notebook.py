"""What a Slide shows in a notebook (Jupyter's ``_repr_html_``): its thumbnail, its label and a
table of its metadata. Built from the public Slide and Scene API only."""

from __future__ import annotations

import base64
import contextlib
import html
import io
from typing import TYPE_CHECKING

import numpy as np

from .display import Display
from .errors import TilescopeError

if TYPE_CHECKING:
    from .model import Scene, Slide

THUMB = 320  # longest side of the thumbnail shown, in pixels


def _rgb(a: np.ndarray) -> np.ndarray:
    """An associated image (8-bit grey or RGB, mostly) as 8-bit: other types stretched to their range."""
    if a.dtype != np.uint8:
        a = (255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9)).astype(np.uint8)
    return a[..., :3] if a.shape[-1] >= 3 else a[..., :1]


def _png(a: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, "PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" />'


def _thumbnail(scene: Scene) -> str:
    w, h = scene.size
    try:
        return _png(Display(scene)(scene.read(size=(THUMB, 0) if w >= h else (0, THUMB))))
    except TilescopeError as e:  # a broken slide still shows its metadata
        return f"<i>{html.escape(str(e))}</i>"


def slide_html(slide: Slide) -> str:
    if slide.closed:
        return f"<p>{html.escape(repr(slide))}</p>"
    rows = [("path", slide.path), ("driver", slide.driver), ("vendor", slide.vendor or "")]
    for sc in slide.scenes:
        prefix = f"scene {sc.name!r}: " if len(slide.scenes) > 1 else ""
        rows += [(f"{prefix}size", f"{sc.size[0]} x {sc.size[1]}"),
                 (f"{prefix}levels", ", ".join(f"{lv.size[0]}x{lv.size[1]}" for lv in sc.levels)),
                 (f"{prefix}channels", f"{', '.join(sc.channel_names)} ({sc.dtype})"),
                 (f"{prefix}z, t", f"{sc.num_z_slices}, {sc.num_t_frames}"),
                 (f"{prefix}mpp", "" if sc.mpp is None else f"{sc.mpp[0]:.4g} x {sc.mpp[1]:.4g} µm"),
                 (f"{prefix}magnification", "" if sc.magnification is None else f"{sc.magnification:g}x")]
    rows += [("associated", ", ".join(f"{n} ({w}x{h})" for n, (w, h) in
                                      ((n, slide.associated.size(n)) for n in slide.associated)))]
    table = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                    f"{html.escape(str(v))}</td></tr>" for k, v in rows if v != "")
    images = _thumbnail(slide.scenes[0]) if slide.scenes else ""
    if "label" in slide.associated:
        with contextlib.suppress(TilescopeError):  # a broken label: the rest still shows
            images += " " + _png(_rgb(slide.associated["label"]))
    return f"<div><div>{images}</div><table>{table}</table></div>"
