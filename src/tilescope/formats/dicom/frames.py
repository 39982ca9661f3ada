"""Where a level's frames are: each frame's byte range in its file (encapsulated items by
pydicom.encaps, offset tables, 1-bit frames at bit offsets), each frame's tile position, focal
plane and optical path, and a level's planes from the frames of its instances."""

from __future__ import annotations

import builtins
import contextlib
import os
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ... import codecs
from ...engine import GridPlane, Layout
from ...errors import CorruptDataError, UnsupportedFormatError
from ...source import ByteRanges, SourceFile
from .instance import (
    LABELMAP_SOP_CLASS,
    MALFORMED,
    NATIVE,
    PM_SOP_CLASS,
    SEG_SOP_CLASS,
    Instance,
    codec_of,
    segments,
)

if TYPE_CHECKING:
    from pydicom import Dataset

    from ...model import LevelSpec
    from ...source import Pieces

    # a plane's pieces from (z, layer, the instance that owns the layer, its frames)
    MakePieces = Callable[[int, int, Instance, list[tuple[int, Instance, int]]], Pieces]

    from ...source import ByteSource


def frame_ranges(inst: Instance) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offset, length, split, bit shift) of every frame of an instance's pixel data; a split frame
    spans several fragments, and its range holds their item headers too; a shifted frame starts
    that many bits into its first byte (1-bit frames are packed back to back across frames, so
    frame k of a 10x10 segmentation starts at bit 100 k). :class:`Frames` undoes both."""
    # a RawDataElement (value_tell, length): pixel data is read deferred (instance.read_dataset)
    raw: Any = inst.ds.get_item(inst.pixel_tag, keep_deferred=True)
    if raw is None:
        raise CorruptDataError(f"{inst.path}: no Pixel Data")
    start = raw.value_tell
    n = inst.frames
    if inst.syntax in NATIVE:
        ds = inst.ds
        nbits = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
        need = -(-nbits * n // 8)
        if raw.length not in (None, 0xFFFFFFFF) and raw.length < need:
            raise CorruptDataError(f"{inst.path}: Pixel Data holds {raw.length} bytes, {n} frames of "
                                   f"{ds.Columns}x{ds.Rows} need {need}")
        if start + need > (os.path.getsize(inst.path) if inst.source is None else inst.source.size):
            raise CorruptDataError(f"{inst.path}: the file is truncated: its {n} frames end at byte "
                                   f"{start + need}, past its end")
        first_bit = np.arange(n, dtype=np.int64) * nbits
        shift = first_bit % 8
        return start + first_bit // 8, (shift + nbits + 7) // 8, np.zeros(n, bool), shift.astype(np.int8)
    if inst.source is not None and (quick := _from_tables(inst, start)) is not None:
        return quick
    from pydicom.encaps import parse_basic_offsets, parse_fragments

    with builtins.open(inst.path, "rb") if inst.source is None else SourceFile(inst.source) as f:
        size = os.fstat(f.fileno()).st_size if inst.source is None else inst.source.size
        f.seek(start)
        try:
            table = np.asarray(parse_basic_offsets(f), np.int64)
            count, found = parse_fragments(f)
        except (ValueError, struct.error) as e:
            raise CorruptDataError(f"{inst.path}: encapsulated pixel data is broken: {e}") from None
        if count == 0:
            raise CorruptDataError(f"{inst.path}: encapsulated pixel data without fragments")
        where = np.asarray(found, np.int64)
        # pydicom's parser stops quietly at the end of the file: the last item and the sequence
        # delimiter after it must be whole
        f.seek(int(where[-1]) + 4)
        end = int(where[-1]) + 8 + struct.unpack("<I", f.read(4).ljust(4, b"\xff"))[0]
        f.seek(end)
        if end + 8 > size or f.read(4) != b"\xfe\xff\xdd\xe0":
            raise CorruptDataError(f"{inst.path}: the file is truncated: encapsulated pixel data ends "
                                   f"without its sequence delimiter")
        eot = inst.ds.get("ExtendedOffsetTable")
        heads = []
        if eot is None and len(table) != inst.frames and count not in (inst.frames, 1):
            for at in where:  # no table: each fragment's first bytes tell where codestreams start
                f.seek(int(at) + 8)
                heads.append(f.read(8))
    if eot is not None:  # Extended Offset Table: 64-bit offsets from the first fragment's item
        table = np.frombuffer(bytes(eot), "<u8").astype(np.int64)
        if len(table) != inst.frames:
            raise CorruptDataError(f"{inst.path}: the Extended Offset Table lists {len(table)} of "
                                   f"{inst.frames} frames")
    ends = np.r_[where[1:], end]  # each item's end: the next item's start, the last one's length
    fragments = where
    if len(table) == inst.frames:  # an offset table: from the first fragment's item
        if not np.isin(where[0] + table, where).all():
            raise CorruptDataError(f"{inst.path}: the offset table does not point at fragments")
        first = np.searchsorted(where, where[0] + table)
    elif count == inst.frames:
        first = np.arange(inst.frames)
    elif inst.frames == 1:
        first = np.zeros(1, np.int64)
    else:  # no table: a frame starts at each fragment opening a JPEG / JPEG 2000 codestream
        first = np.flatnonzero([h[:2] == b"\xff\xd8" or h[:4] == b"\xff\x4f\xff\x51" or h[4:8] == b"jP  "
                                for h in heads])
        if len(first) != inst.frames:
            raise CorruptDataError(f"{inst.path}: {count} fragments for {inst.frames} frames and no "
                                   f"offset table to tell where each frame starts")
    last = np.r_[first[1:], len(fragments)] - 1
    split = last > first
    offsets = np.where(split, where[first], where[first] + 8)
    return offsets, ends[last] - offsets, split, np.zeros(n, np.int8)


def _from_tables(inst: Instance, start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`frame_ranges` of encapsulated pixel data from its offset tables alone, for a file at a
    URL (walking the fragments' item headers would read all of its pixel data): an Extended Offset
    Table with its lengths gives each frame's fragment; a full Basic Offset Table each frame's
    first item, read up to the next frame's (items and all: ``split``; the last one up to the
    sequence delimiter ending the file). None where the tables do not say that much."""
    src, n = inst.source, inst.frames
    assert src is not None
    head = src.pread(start, 8)
    if head[:4] != b"\xfe\xff\x00\xe0":
        return None
    bot = struct.unpack("<I", head[4:])[0]
    first = start + 8 + bot  # the first fragment's item
    eot, lengths = inst.ds.get("ExtendedOffsetTable"), inst.ds.get("ExtendedOffsetTableLengths")
    none, zero = np.zeros(n, bool), np.zeros(n, np.int8)
    if eot is not None and lengths is not None:
        table = np.frombuffer(bytes(eot), "<u8").astype(np.int64)
        counts = np.frombuffer(bytes(lengths), "<u8").astype(np.int64)
        offsets = first + table + 8
        if len(table) == len(counts) == n and (offsets + counts <= src.size).all() and (table >= 0).all():
            return offsets, counts, none, zero
        return None
    if bot != 4 * n or first + 8 > src.size or src.pread(src.size - 8, 8) != b"\xfe\xff\xdd\xe0" + bytes(4):
        return None
    where = first + np.frombuffer(src.pread(start + 8, bot), "<u4").astype(np.int64)
    ends = np.r_[where[1:], src.size - 8]
    if where[0] != first or not (ends > where + 8).all():
        return None
    return where, ends - where, ~none, zero


def realign(data: bytes, shift: int) -> bytes:
    """Bits packed least significant first, from bit ``shift`` of ``data`` on, as whole bytes."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")[shift:]
    return np.packbits(bits, bitorder="little").tobytes()


class Frames(ByteRanges):
    """Frames of a level, possibly in several files (concatenations); a frame split over several
    fragments is read in one range and its item headers are dropped; a 1-bit frame that starts
    inside a byte is shifted to start on one."""

    def __init__(self, offsets, counts, split, shift, files, label: str):
        super().__init__(offsets, counts, label, missing_ok=True, file=files[0])
        self.files, self.split, self.shift = files, split, shift

    def fetch(self, source: ByteSource, index: int) -> bytes:
        data = super().fetch(source, index)
        if self.shift[index]:
            return realign(data, int(self.shift[index]))
        if not self.split[index]:
            return data
        parts, pos = [], 0
        while pos + 8 <= len(data):
            length = struct.unpack_from("<I", data, pos + 4)[0]
            parts.append(data[pos + 8:pos + 8 + length])
            pos += 8 + length
        return b"".join(parts)


def frame_positions(inst: Instance) -> list[tuple[int, int, int, int]]:
    """(tile column, tile row, focal plane index, layer) of every frame; the layer is the optical
    path, or a segmentation's segment."""
    ds = inst.ds
    cols, rows = inst.grid
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    organization = str(ds.get("DimensionOrganizationType", "")).upper()
    # without a Dimension Organization Type (OrthancWSIDicomizer 1.1), per-frame positions place frames
    if organization == "TILED_FULL" or not (organization or (per_frame and "PlanePositionSlideSequence"
                                                                 in per_frame[0])):
        nz = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
        first = int(ds.get("ConcatenationFrameOffsetNumber", 0) or 0)  # a concatenation's later part
        return [(i % cols, (i // cols) % rows, (i // (cols * rows)) % nz, i // (cols * rows * nz))
                for i in range(first, first + inst.frames)]
    out = []
    if len(per_frame) != inst.frames:
        raise CorruptDataError(f"{inst.path}: TILED_SPARSE with {len(per_frame)} per-frame groups for "
                               f"{inst.frames} frames")
    planes, spacing = focal_planes(ds)
    paths = path_ids(ds)
    for item in per_frame:
        pos = item.PlanePositionSlideSequence[0]
        col = (int(pos.ColumnPositionInTotalImagePixelMatrix) - 1) // inst.tile[0]
        row = (int(pos.RowPositionInTotalImagePixelMatrix) - 1) // inst.tile[1]
        z = 0
        if len(planes) > 1 and spacing and "ZOffsetInSlideCoordinateSystem" in pos:
            z = round((float(pos.ZOffsetInSlideCoordinateSystem) - planes[0]) / spacing)
        segment = item.get("SegmentIdentificationSequence")  # a segmentation's frames: one segment each
        path = item.get("OpticalPathIdentificationSequence")
        if segment:
            layer = int(segment[0].ReferencedSegmentNumber) - 1
        elif path and str(path[0].OpticalPathIdentifier) in paths:
            layer = paths.index(str(path[0].OpticalPathIdentifier))
        else:
            layer = 0
        out.append((col, row, z, layer))
    return out


def focal_planes(ds: Dataset) -> tuple[list[float], float | None]:
    """The focal planes of an instance as offsets in micrometres (Z offset of the origin, plus
    multiples of Spacing Between Slices), and that spacing (None if not recorded)."""
    nz = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
    z0, spacing = 0.0, None
    with contextlib.suppress(*MALFORMED):
        z0 = float(ds.TotalPixelMatrixOriginSequence[0].ZOffsetInSlideCoordinateSystem)
    with contextlib.suppress(*MALFORMED):
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        spacing = float(measures.SpacingBetweenSlices) * 1000
    return [z0 + k * (spacing or 0.0) for k in range(nz)], spacing


class Axes(NamedTuple):
    """A slide's optical paths (identifiers, in channel order, and their Optical Path Sequence
    items) and focal planes (micrometres, ascending) over all its VOLUME instances: one instance
    may hold every path and plane, or one each."""

    paths: list[str]
    items: list
    planes: list[float]
    spacing: float | None  # between focal planes, micrometres


def path_ids(ds: Dataset) -> list[str]:
    items = list(ds.get("OpticalPathSequence", []) or [])
    return [str(p.get("OpticalPathIdentifier", k)) for k, p in enumerate(items)] or [""]


def slide_axes(levels: list[list[Instance]]) -> Axes:
    """The optical paths in order of first appearance (largest level first) and the focal planes."""
    paths: list[str] = []
    items: list = []
    planes: set[float] = set()
    spacing: float | None = None
    for inst in (i for insts in levels for i in insts):
        seq = list(inst.ds.get("OpticalPathSequence", []) or []) or [None]
        for ident, item in zip(path_ids(inst.ds), seq, strict=True):
            if ident not in paths:
                paths.append(ident)
                items.append(item)
        offsets, sp = focal_planes(inst.ds)
        planes.update(round(z, 4) for z in offsets)
        spacing = spacing or sp
    return Axes(paths, [i for i in items if i is not None], sorted(planes), spacing)


def frames_by_tile(insts: list[Instance], axes: Axes | None = None
                   ) -> Iterator[tuple[int, int, int, Instance, int]]:
    """(focal plane, layer, tile index, instance, frame index) of every frame of a level's
    instances (concatenations, other paths and planes included); with ``axes``, planes and layers
    are the slide's (optical paths), else each instance's own (a segmentation's segments)."""
    for inst in insts:
        cols, rows = inst.grid
        if axes is not None:  # the instance's own planes and paths -> the slide's
            planes = [round(z, 4) for z in focal_planes(inst.ds)[0]]
            zmap = {k: axes.planes.index(z) for k, z in enumerate(planes) if z in axes.planes}
            opmap = {k: axes.paths.index(p) for k, p in enumerate(path_ids(inst.ds)) if p in axes.paths}
        for k, (col, row, z, op) in enumerate(frame_positions(inst)):
            if 0 <= col < cols and 0 <= row < rows:
                if axes is not None:
                    if z not in zmap or op not in opmap:
                        continue
                    z, op = zmap[z], opmap[op]
                yield z, op, row * cols + col, inst, k


def stack(inst: Instance) -> tuple[int, int]:
    """(focal planes, layers: optical paths or segments) of one instance."""
    ds = inst.ds
    nz = int(ds.get("TotalPixelMatrixFocalPlanes", 1) or 1)
    if inst.sop_class == SEG_SOP_CLASS:
        return nz, len(ds.get("SegmentSequence", []) or [None])
    if inst.sop_class == LABELMAP_SOP_CLASS:
        return nz, 1
    if inst.sop_class == PM_SOP_CLASS:
        return nz, 1
    return nz, int(ds.get("NumberOfOpticalPaths", 1) or 1)


def level_layout(insts: list[Instance], axes: Axes | None, make_pieces: MakePieces) -> LevelSpec:
    """(size, tile, layout) of a level: z = focal planes, channels = layers (optical paths, or
    without ``axes`` an instance's own layers) x samples. ``make_pieces(z, layer, owner, frames)``
    gives each plane's pieces from its frames [(tile index, instance, frame index)]; ``owner`` is
    the instance whose tiling and encoding the layer has (the first that holds it)."""
    inst0 = insts[0]
    nz, nop = stack(inst0)
    if axes is not None:
        nz, nop = len(axes.planes), len(axes.paths)
    frames: dict = defaultdict(list)
    owners: list = [None] * nop
    for z, op, i, inst, k in frames_by_tile(insts, axes):
        frames[z, op].append((i, inst, k))
        owners[op] = owners[op] or inst
    owners = [o or inst0 for o in owners]  # a path absent at this level: background
    codecs_ = [codec_of(o) for o in owners]
    if len({(c.samples, np.dtype(c.dtype)) for c in codecs_}) > 1:
        raise UnsupportedFormatError(f"{inst0.path}: the optical paths of one level differ in samples per "
                                     f"pixel or pixel type")
    planes = {(z, 0): tuple(GridPlane(make_pieces(z, op, owners[op], frames[z, op]), codecs_[op], inst0.size,
                                  owners[op].tile) for op in range(nop)) for z in range(nz)}
    channel_map = tuple((op, s) for op in range(nop) for s in range(codecs_[op].samples))
    if inst0.sop_class == LABELMAP_SOP_CLASS and axes is None:
        # each segment a 0/1 channel of its own, decoded from the same frames: value == number
        numbers = [int(q.SegmentNumber) for q in segments(inst0.ds)]
        planes = {zt: (p, *(GridPlane(p.pieces, codecs.equal_to(p.codec, n), p.size, p.tile)
                            for n in numbers)) for zt, (p,) in planes.items()}
        channel_map += tuple((1 + k, 0) for k in range(len(numbers)))
    return inst0.size, owners[0].tile, Layout(planes, channel_map)


def file_level(insts: list[Instance], label: str, axes: Axes | None = None) -> LevelSpec:
    """(size, tile, layout) of one level from its instances' frames, read from their files."""
    ranges = {inst.path: inst.ranges for inst in insts}

    def make_pieces(z: int, op: int, owner: Instance, frames: list[tuple[int, Instance, int]]) -> Pieces:
        n = owner.grid[0] * owner.grid[1]
        offsets, counts, split, shift, files = np.zeros(n, np.int64), np.zeros(n, np.int64), \
            np.zeros(n, bool), np.zeros(n, np.int8), [owner.path] * n
        for i, inst, k in frames:
            offsets[i], counts[i], split[i], shift[i] = (r[k] for r in ranges[inst.path])
            files[i] = inst.path
        pieces = Frames(offsets, counts, split, shift, files, f"{label} z={z} layer={op}")
        pieces.remote_options = getattr(owner.source, "options", None)  # files at URLs: read as the slide
        return pieces
    return level_layout(insts, axes, make_pieces)
