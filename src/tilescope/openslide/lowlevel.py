"""``openslide.lowlevel``'s shape over the drop-in: its error classes and its functions, each with
``available`` (True: tilescope provides every call), so code that imports the module, tests
features (``lowlevel.read_icc_profile.available``) or calls it with ``slide._osr`` runs unchanged.
A slide's handle is the drop-in ``OpenSlide`` itself.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

if TYPE_CHECKING:
    from PIL import Image

    from . import OpenSlide, OpenSlideCache

Filename: TypeAlias = str | bytes | os.PathLike[Any]
ArgumentError = ctypes.ArgumentError  # what openslide-python raises for a wrong argument or a closed slide


class OpenSlideError(Exception):
    """An error reading a slide (openslide-python's class of the same name)."""


class OpenSlideVersionError(OpenSlideError):
    """Kept for API compatibility; tilescope provides every call."""

    def __init__(self, minimum_version: str):
        super().__init__(f"OpenSlide >= {minimum_version} required")
        self.minimum_version = minimum_version


class OpenSlideUnsupportedFormatError(OpenSlideError):
    """The file is not a format that can be opened."""


def argument_error(kind: type[Exception], message: str, position: int = 1) -> ctypes.ArgumentError:
    """The error openslide-python's ctypes layer raises for a bad argument: ``except
    ctypes.ArgumentError`` clauses written for it catch ours."""
    return ctypes.ArgumentError(f"argument {position}: {kind.__name__}: {message}")


def filename(obj: Any) -> str:
    """A path given as str, bytes or os.PathLike, as str (non-ASCII bytes by the file system's
    encoding); anything else is refused as openslide refuses it."""
    try:
        return os.fsdecode(os.fspath(obj))
    except TypeError as e:
        raise argument_error(TypeError, str(e)) from None


def size_t(obj: Any) -> int:
    """A cache capacity: a non-negative int, as openslide's ``size_t`` argument."""
    if not isinstance(obj, int):
        raise argument_error(TypeError, "Incorrect type")
    if obj < 0:
        raise argument_error(ValueError, "Value out of range")
    return obj


def _text(name: str | bytes) -> str:
    """A property's or associated image's name as openslide takes it: str, or UTF-8 bytes."""
    return name.decode() if isinstance(name, bytes) else name


_F = TypeVar("_F", bound=Callable[..., Any])


def _available(fn: _F) -> _F:
    fn.available = True  # type: ignore[attr-defined]
    return fn


@_available
def open(filename: Filename) -> OpenSlide:  # openslide's name
    from . import OpenSlide

    return OpenSlide(filename)


@_available
def close(slide: OpenSlide) -> None:
    slide.close()


@_available
def detect_vendor(filename: Filename) -> str | None:
    from . import OpenSlide

    return OpenSlide.detect_format(filename)


@_available
def get_version() -> str:
    from . import __library_version__

    return __library_version__


@_available
def get_error(slide: OpenSlide) -> str | None:
    return slide._error


@_available
def get_level_count(slide: OpenSlide) -> int:
    return slide.level_count


@_available
def get_level_dimensions(slide: OpenSlide, level: int) -> tuple[int, int]:
    dims = slide.level_dimensions
    return dims[level] if 0 <= level < len(dims) else (-1, -1)


@_available
def get_level_downsample(slide: OpenSlide, level: int) -> float:
    ds = slide.level_downsamples
    return ds[level] if 0 <= level < len(ds) else -1.0


@_available
def get_best_level_for_downsample(slide: OpenSlide, downsample: float) -> int:
    return slide.get_best_level_for_downsample(downsample)


@_available
def read_region(slide: OpenSlide, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
    return slide.read_region((x, y), level, (w, h))


@_available
def read_icc_profile(slide: OpenSlide) -> bytes | None:
    slide._check()
    return slide._icc()


@_available
def get_icc_profile_size(slide: OpenSlide) -> int:
    return len(read_icc_profile(slide) or b"")


@_available
def get_property_names(slide: OpenSlide) -> list[str]:
    return list(slide.properties)


@_available
def get_property_value(slide: OpenSlide, name: str | bytes) -> str | None:
    return slide.properties.get(_text(name))


@_available
def get_associated_image_names(slide: OpenSlide) -> list[str]:
    return list(slide.associated_images)


@_available
def get_associated_image_dimensions(slide: OpenSlide, name: str | bytes) -> tuple[int, int]:
    slide._check()
    return slide._slide.associated.size(_text(name))


@_available
def read_associated_image(slide: OpenSlide, name: str | bytes) -> Image.Image:
    return slide.associated_images[_text(name)]


@_available
def read_associated_image_icc_profile(slide: OpenSlide, name: str | bytes) -> bytes | None:
    slide._check()
    return slide._slide.associated.icc_profile(_text(name))


@_available
def get_associated_image_icc_profile_size(slide: OpenSlide, name: str | bytes) -> int:
    return len(read_associated_image_icc_profile(slide, name) or b"")


@_available
def cache_create(capacity: int) -> OpenSlideCache:
    from . import OpenSlideCache

    return OpenSlideCache(capacity)


@_available
def set_cache(slide: OpenSlide, cache: OpenSlideCache) -> None:
    slide.set_cache(cache)


@_available
def cache_release(cache: OpenSlideCache) -> None:
    """Nothing to release: the cache goes when nothing refers to it."""
