"""Colour management: RGB pixels from a slide's ICC profile to sRGB with littleCMS (Pillow's
ImageCms, the profile's default rendering intent: openslide-python's recipe)."""

from __future__ import annotations

import io

import numpy as np

from .errors import CorruptDataError


class ToSrgb:
    """The sRGB transforms of one slide's ICC profiles, each built on first use."""

    def __init__(self, where: str):
        self.where = where
        self._transforms: dict[bytes, object] = {}

    def apply(self, a: np.ndarray, icc: bytes | None) -> None:
        """Convert uint8 RGB pixels (..., 3) from ``icc`` to sRGB in place (unchanged without one)."""
        if icc is None or a.dtype != np.uint8 or a.size == 0:
            return
        from PIL import Image, ImageCms  # loaded when a slide is colour-managed, not on import

        transform = self._transforms.get(icc)
        if transform is None:
            try:
                profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                transform = self._transforms[icc] = ImageCms.buildTransform(
                    profile, ImageCms.createProfile("sRGB"), "RGB", "RGB",
                    ImageCms.Intent(ImageCms.getDefaultIntent(profile)))
            except (OSError, ImageCms.PyCMSError) as e:
                raise CorruptDataError(f"{self.where}: the ICC profile cannot be used: {e}") from None
        flat = np.ascontiguousarray(a).reshape(-1, a.shape[-2], 3)  # stacked planes: one tall image
        a[...] = np.asarray(transform.apply(Image.fromarray(flat, "RGB"))).reshape(a.shape)  # type: ignore[attr-defined]
