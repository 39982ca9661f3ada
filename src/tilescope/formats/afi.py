"""Aperio AFI (fluorescence): an XML ``<ImageList>`` naming one SVS file per channel.

The Slide has one Scene whose channels are those files' channels, named by each ``<ChannelName>``
(a file with several samples gives ``NAME:R``, ``NAME:G``, ...). Each channel file is parsed by
the driver that reads it (SVS), and its planes are taken over pointing at that file: the engine
opens the channel files on first use, reads them aligned level by level, and closes them with the
slide. Files must agree on size and pyramid; a missing, unreadable or mismatched one is a typed
error naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import TYPE_CHECKING

from ..engine import Layout, Plane
from ..errors import CorruptDataError, SourceNotFoundError, TilescopeError
from ..model import Scene, Slide, make_levels
from . import parse_xml

if TYPE_CHECKING:
    from ..engine import Options
    from . import Probe

NAME = "AFI"
OPENSLIDE_VENDOR = "aperio"  # openslide's name for the format (detect_format, openslide.vendor)
LOCAL_ONLY = True  # the XML names image files beside it, opened by path
_MAX_XML = 1 << 20


def detect(probe: Probe) -> bool:
    head = probe.source.head(1024).lstrip(b"\xef\xbb\xbf \t\r\n")
    return (head.startswith(b"<?xml") or head.startswith(b"<ImageList")) and b"<ImageList" in head


def _channel_file(afi: str, i: int, image) -> tuple[str, str]:
    path = (image.findtext("Path") or "").strip()
    if not path:
        raise CorruptDataError(f"{afi}: AFI <Image> #{i} has no <Path> element")
    full = path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(afi)), path)
    name = (image.findtext("ChannelName") or "").strip() or os.path.splitext(os.path.basename(path))[0]
    return full, name


def open(probe: Probe, options: Options) -> Slide:
    from .. import open as open_file  # the package's open: detection and the parsed-slide cache

    src = probe.source
    if src.size > _MAX_XML:
        raise CorruptDataError(f"{src.path}: {src.size} bytes is too large for an AFI XML file")
    xml = src.pread(0, src.size).decode("utf-8", "replace")
    root = parse_xml(xml, src.path, "AFI XML")
    if root.tag != "ImageList":
        raise CorruptDataError(f"{src.path}: AFI root element is <{root.tag}>, not <ImageList>")
    images = root.findall("Image")
    if not images:
        raise CorruptDataError(f"{src.path}: AFI <ImageList> has no <Image> element")
    channels = []  # (path, name, scene)
    for i, image in enumerate(images):
        path, name = _channel_file(src.path, i, image)
        if not os.path.isfile(path):
            raise SourceNotFoundError(f"{src.path}: AFI channel {name!r}: file {path} is missing")
        try:
            with open_file(path) as child:
                channels.append((path, name, child.scenes[0]))
        except TilescopeError as e:
            raise type(e)(f"{src.path}: AFI channel {name!r}: {e}") from e
    first_path, _, first = channels[0]
    shape = [lv.size for lv in first.levels]
    for path, name, sc in channels[1:]:
        if [lv.size for lv in sc.levels] != shape or sc.dtype != first.dtype:
            raise CorruptDataError(
                f"{src.path}: AFI channel {name!r}: {path} is {sc.size} {sc.dtype} with levels "
                f"{[lv.size for lv in sc.levels]}, not {first.size} {first.dtype} with {shape} "
                f"as {first_path}")
    specs = []
    for li, lv in enumerate(first.levels):
        planes: list[Plane] = []
        cmap: list[tuple[int, int]] = []
        for path, _, sc in channels:
            layout = sc.levels[li].layout
            cmap += [(len(planes) + m[0], m[1]) for m in layout.channel_map if m is not None]
            planes += [_in_file(p, path) for p in layout.planes[(0, 0)]]
        specs.append((lv.size, lv.tile_size, Layout({(0, 0): tuple(planes)}, tuple(cmap))))
    names = []
    for _, name, sc in channels:
        names += [name] if sc.num_channels == 1 else [f"{name}:{c}" for c in sc.channel_names]
    slide = Slide(src, NAME, options, raw_metadata=xml, vendor="aperio",
                  properties={"afi": {"files": [p for p, _, _ in channels], "channels": names}})
    scene = Scene(slide, name="main", levels=make_levels(specs), channel_names=names, dtype=first.dtype,
                  mpp=first.mpp, magnification=first.magnification, compression=first.compression,
                  compression_raw=first.compression_raw)
    slide.set_contents([scene], {})
    return slide


def _in_file(plane, path: str):
    """``plane`` reading its pieces from ``path`` (the same pieces, so cache entries are shared)."""
    pieces = copy.copy(plane.pieces)
    pieces.file = path
    return dataclasses.replace(plane, pieces=pieces)
