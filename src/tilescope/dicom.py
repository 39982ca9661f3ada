"""DICOM whole-slide images in local folders (see the README's DICOM section).
``tilescope.open(folder)`` opens a folder's first slide; :func:`find_slides` lists them all."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import options as _options
from .errors import InvalidRequestError, SourceNotFoundError
from .formats.dicom import find_slides as _find_slides
from .model import Slide


def find_slides(folder: str | os.PathLike, **overrides: Any) -> list[Slide]:
    """Every slide among the DICOM files of ``folder`` (whole-slide image instances grouped by frame
    of reference and container, with their segmentations and parametric maps), opened, in order of
    each slide's first file name; other objects and unreadable files are left out (the latter with
    a warning). ``overrides`` are options as for :func:`tilescope.open`."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise SourceNotFoundError(f"{folder}: no such folder")
    try:
        opts = dataclasses.replace(_options, **overrides)
    except TypeError as e:
        raise InvalidRequestError(f"find_slides: {e}") from None
    return _find_slides(folder, opts)
