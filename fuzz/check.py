"""The invariant every input keeps: opening it, reading every scene at a small size, a level-0
region, each level's first pixels, the associated images, ``metadata``, ``properties`` and the
openslide drop-in's properties either succeed or raise a typed error (``TilescopeError``; the
drop-in's ``OpenSlideError``). Anything else escaping is a finding."""

from __future__ import annotations

import json
import os
from typing import Any

import tilescope
from tilescope.openslide import OpenSlide, OpenSlideError

# small budgets, so a forged size is refused rather than allocated (the guards under test)
OPTIONS: dict[str, Any] = {"max_read_bytes": 64 << 20, "max_decode_pixels": 1 << 24,
                           "max_decode_bytes": 64 << 20, "band_bytes": 8 << 20,
                           "cache": tilescope.TileCache(8 << 20)}


def exercise(path: str | list[str], dropin: bool = True) -> list[str]:
    """Run every public read over ``path``; returns what failed with a typed error (a list of
    "step: error" lines, for the corpus tests); anything untyped propagates."""
    failed = _slide(lambda: tilescope.open(path, **OPTIONS))
    if dropin and isinstance(path, str) and not os.path.isdir(path):
        try:
            with OpenSlide(path) as o:
                dict(o.properties)
                o.read_region((0, 0), o.level_count - 1, (16, 16))
        except OpenSlideError:
            pass
    return failed


def exercise_url(url: str, **keywords: Any) -> list[str]:
    """:func:`exercise` for a URL a driver opens (DICOMweb), with its keywords; no retries."""
    return _slide(lambda: tilescope.open(url, retries=0, timeout=5, **keywords, **OPTIONS))


def _slide(opener: Any) -> list[str]:
    failed: list[str] = []

    def step(what: str, fn: Any) -> Any:
        try:
            return fn()
        except tilescope.TilescopeError as e:
            failed.append(f"{what}: {type(e).__name__}: {e}")
            return None

    slide = step("open", opener)
    if slide is None:
        return failed
    with slide:
        step("metadata", lambda: json.dumps(slide.metadata, default=str))
        for i, scene in enumerate(slide.scenes):
            w, h = scene.size
            step(f"scene {i} thumbnail", lambda s=scene: s.read(size=(64, 0)))
            step(f"scene {i} region", lambda s=scene, w=w, h=h: s.read((w // 2, h // 2, 48, 40)))
            for lv in range(len(scene.levels)):
                step(f"scene {i} level {lv}", lambda s=scene, lv=lv: s.read_level(lv, (0, 0, 32, 32)))
            if scene.num_z_slices > 1 or scene.num_t_frames > 1:
                step(f"scene {i} last plane", lambda s=scene: s.read(
                    size=(32, 0), z=s.num_z_slices - 1, t=s.num_t_frames - 1))
        for name in list(slide.associated):
            step(f"associated {name}", lambda n=name: slide.associated[n])
    return failed
