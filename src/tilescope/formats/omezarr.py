"""OME-Zarr (OME-NGFF 0.4 on zarr v2, 0.5 on zarr v3, sharded arrays too): a folder, local or at a
URL (a web server or an object store, through the same sources as remote files).

The slide is the image group: a folder (or its ``zarr.json`` / ``.zattrs``) whose attributes hold
NGFF ``multiscales``. Each dataset is a level; axes ``t``, ``c``, ``z``, ``y``, ``x`` (any subset with
y and x) give channels, z and t; ``omero`` channels give names and colours; the first dataset's
scale gives mpp (µm), the z step and the time step. A level's pieces are its chunks (one file per
chunk, or byte ranges of shard files located by each shard's index), decoded here with imagecodecs
(bytes, zstd, gzip, zlib, blosc, crc32c) and pasted by the shared engine like any tile; a missing
chunk is the array's fill value.
"""

from __future__ import annotations

import builtins  # this module's open() is the driver's
import json
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from ..codecs import Codec
from ..engine import GridPlane, Layout
from ..errors import CorruptDataError, SourceNotFoundError, UnsupportedFormatError
from ..model import Scene, Slide, make_levels
from ..remote import is_remote
from ..source import PieceList, open_file

if TYPE_CHECKING:
    from ..engine import Options
    from . import Probe

NAME = "OMEZarr"
OPENSLIDE_VENDOR = "ome-zarr"  # the drop-in's vendor name (openslide has none: like ome-tiff, scanimage)
_MAX_JSON = 4 << 20
_NAMES = ("zarr.json", ".zattrs", ".zgroup")
_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "centimeter": 1e4, "meter": 1e6,
       "angstrom": 1e-4}
_S = {"second": 1.0, "millisecond": 1e-3, "microsecond": 1e-6, "minute": 60.0, "hour": 3600.0}


def detect(probe: Probe) -> bool:
    if os.path.basename(probe.path) not in _NAMES:
        return False
    head = probe.source.head(4096).lstrip()
    return head.startswith(b"{") and (b"multiscales" in head or b'"ome"' in head or
                                      os.path.basename(probe.path) == ".zgroup")


def _read(path: str, ropts: Any, limit: int | None = None) -> bytes | None:
    """A file's bytes (local, or at a URL with the slide's remote options); None if it is not there."""
    try:
        src = open_file(path, ropts)
    except SourceNotFoundError:
        return None
    try:
        if limit is not None and src.size > limit:
            raise CorruptDataError(f"{path}: {src.size} bytes, too large for zarr metadata")
        return src.pread(0, src.size)
    except SourceNotFoundError:
        return None
    finally:
        src.close()


def _json(path: str, what: str, ropts: Any = None, data: bytes | None = None) -> dict:
    """A metadata file's JSON object (``data``: its bytes, when already read)."""
    data = data if data is not None else _read(path, ropts, _MAX_JSON)
    if data is None:
        raise CorruptDataError(f"{path}: {what} is missing")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptDataError(f"{path}: {what} is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CorruptDataError(f"{path}: {what} is not a JSON object")
    return doc


class _Array:
    """One zarr array's metadata (v2 or v3): shape, chunks, dtype, fill, how a chunk's bytes
    decode and where chunk files are."""

    def __init__(self, root: str, path: str, ropts: Any):
        self.dir = root + "/" + path.strip("/")
        v3 = _read(self.dir + "/zarr.json", ropts, _MAX_JSON)
        if v3 is not None:
            self._v3(_json(self.dir + "/zarr.json", "array metadata", data=v3))
        else:
            self._v2(_json(self.dir + "/.zarray", "array metadata", ropts))
        where = f"{self.dir}"
        if len(self.shape) != len(self.chunks) or \
                any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in self.shape) or \
                not all(_positive(n) for n in self.chunks):
            raise CorruptDataError(f"{where}: shape {self.shape} and chunks {self.chunks} do not agree")

    def _v3(self, m: dict) -> None:
        if m.get("node_type") != "array":
            raise CorruptDataError(f"{self.dir}: zarr.json is not an array's")
        self.shape = list(m.get("shape", []))
        grid = m.get("chunk_grid", {})
        if grid.get("name") != "regular":
            raise UnsupportedFormatError(f"{self.dir}: chunk grid {grid.get('name')!r} (only regular)")
        outer = list(grid.get("configuration", {}).get("chunk_shape", []))
        enc = m.get("chunk_key_encoding", {"name": "default"})
        sep = enc.get("configuration", {}).get("separator", "/" if enc.get("name") == "default" else ".")
        self._prefix = "c" + sep if enc.get("name") == "default" else ""
        self._sep = sep
        self.dtype = _dtype3(m.get("data_type"), self.dir)
        self.fill = m.get("fill_value", 0)
        codecs = list(m.get("codecs", []))
        self.shard: list[int] | None = None
        if codecs and codecs[0].get("name") == "sharding_indexed":
            conf = codecs[0].get("configuration", {})
            if conf.get("index_location", "end") not in ("end", "start"):
                raise UnsupportedFormatError(f"{self.dir}: shard index at {conf.get('index_location')!r}")
            self.shard, self.chunks = outer, list(conf.get("chunk_shape", []))
            self._index_at_end = conf.get("index_location", "end") == "end"
            codecs = list(conf.get("codecs", []))
            if any(c.get("name") not in ("bytes", "crc32c") for c in conf.get("index_codecs", [])):
                raise UnsupportedFormatError(f"{self.dir}: shard index codecs other than bytes, crc32c")
            if len(self.chunks) != len(outer) or not all(_positive(v) for v in outer + self.chunks) or \
                    any(o % c for o, c in zip(outer, self.chunks, strict=False)):
                raise CorruptDataError(f"{self.dir}: shard {outer} is no multiple of chunk {self.chunks}")
        else:
            self.chunks = outer
        self.decompress = _pipeline3(codecs, self.dir)
        self.compression = next((c["name"] for c in codecs if c.get("name") not in ("bytes", "crc32c")),
                                "none")
        first = codecs[0] if codecs else {}
        endian = (first.get("configuration") or {}).get("endian") or "little"
        self.dtype = self.dtype.newbyteorder("<" if endian == "little" else ">")

    def _v2(self, m: dict) -> None:
        self.shape, self.chunks = list(m.get("shape", [])), list(m.get("chunks", []))
        if m.get("order", "C") != "C" or m.get("filters"):
            raise UnsupportedFormatError(f"{self.dir}: Fortran order or filters are not supported")
        try:
            self.dtype = np.dtype(m.get("dtype"))
        except TypeError:
            raise CorruptDataError(f"{self.dir}: dtype {m.get('dtype')!r}") from None
        if self.dtype.kind not in "uif":
            raise UnsupportedFormatError(f"{self.dir}: dtype {self.dtype}")
        self.fill = m.get("fill_value") or 0
        self._prefix, self._sep = "", m.get("dimension_separator", ".")
        self.shard = None
        comp = m.get("compressor")
        self.compression = comp.get("id", "none") if comp else "none"
        self.decompress = _decompressor(comp.get("id") if comp else None, comp or {}, self.dir)

    def key(self, coords: list[int]) -> str:
        return self.dir + "/" + self._prefix + self._sep.join(str(c) for c in coords)


def _positive(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0


def _dtype3(name: Any, where: str) -> np.dtype:
    names = {"uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64", "int64", "uint64"}
    if name not in names:
        raise UnsupportedFormatError(f"{where}: data type {name!r}")
    return np.dtype(name)


def _decompressor(name: str | None, conf: dict, where: str) -> Any:
    import imagecodecs

    if name is None:
        return None
    if name == "zstd":
        return imagecodecs.zstd_decode
    if name == "gzip":
        return imagecodecs.gzip_decode
    if name == "zlib":
        return imagecodecs.zlib_decode
    if name == "blosc":
        return imagecodecs.blosc_decode
    raise UnsupportedFormatError(f"{where}: zarr codec {name!r} is not supported")


def _pipeline3(codecs: list[dict], where: str) -> Any:
    """bytes -> bytes of a v3 codec chain: [bytes, (crc32c | a compressor)...]"""
    steps = []
    for c in codecs:
        name = c.get("name")
        if name == "bytes":
            continue
        if name == "crc32c":
            steps.append(lambda b: bytes(b)[:-4])  # the checksum: not verified, dropped
            continue
        if name == "transpose":
            raise UnsupportedFormatError(f"{where}: the transpose codec is not supported")
        steps.append(_decompressor(name, c.get("configuration", {}), where))
    if not steps:
        return None

    def run(data: bytes) -> bytes:
        for fn in reversed(steps):
            data = fn(data)
        return data
    return run


class Chunks(PieceList):
    """A plane's chunks: piece ``ty * nx + tx`` is the chunk at grid (tx, ty) with the plane's
    fixed coordinates on the other axes: a file, or a byte range of a shard file."""

    missing_ok = True

    def __init__(self, array: _Array, axes: list[str], fixed: dict[str, int], grid: tuple[int, int],
                 label: str):
        super().__init__(grid[0] * grid[1], label)
        self.array, self.axes, self.fixed, self.nx = array, axes, fixed, grid[0]
        self._shards: dict[str, np.ndarray | None] = {}
        self._lock = threading.Lock()

    def _where(self, index: int) -> tuple[str, int]:
        """The file holding piece ``index`` and its place among the shard's chunks (0 unsharded)."""
        at = dict(self.fixed, x=index % self.nx, y=index // self.nx)
        coords = [at.get(a, 0) for a in self.axes]
        shard = self.array.shard
        if shard is None:
            return self.array.key(coords), 0
        per = [s // c for s, c in zip(shard, self.array.chunks, strict=True)]
        inner = int(np.ravel_multi_index([c % p for c, p in zip(coords, per, strict=True)], per))
        return self.array.key([c // p for c, p in zip(coords, per, strict=True)]), inner

    def _index(self, path: str, ropts: Any) -> np.ndarray | None:
        """A shard's (offset, nbytes) per chunk, read once; None where the shard is missing."""
        with self._lock:
            if path in self._shards:
                return self._shards[path]
        per = [s // c for s, c in zip(self.array.shard or [], self.array.chunks, strict=True)]
        n = int(np.prod(per))
        size = n * 16 + 4  # the index and its crc32c
        try:
            src = open_file(path, ropts)
        except SourceNotFoundError:
            index = None
        else:
            try:
                total = src.size
                if total < size:
                    raise CorruptDataError(f"{path}: a shard of {total} bytes cannot hold its index of {n}")
                raw = src.pread(total - size if self.array._index_at_end else 0, size)
                index = np.frombuffer(raw[:-4], "<u8").reshape(n, 2).copy()
            finally:
                src.close()
            present = index[index[:, 0] != 2**64 - 1]  # uint64: compared without sums that wrap
            end = np.uint64(total)
            if np.any(present[:, 0] > end) or np.any(present[:, 1] > end - np.minimum(present[:, 0], end)):
                raise CorruptDataError(f"{path}: shard index points past the shard's end")
        with self._lock:
            self._shards[path] = index
        return index

    def is_missing(self, index: int) -> bool:
        path, inner = self._where(index)
        if is_remote(path):  # asked for when read: a missing chunk reads as empty (the fill value)
            return False
        if self.array.shard is None:
            return not os.path.isfile(path)
        table = self._index(path, None)
        return table is None or int(table[inner, 0]) == 2**64 - 1

    def fetch(self, handle: Any, index: int) -> bytes:
        # remote options from the slide's own source as bound now (a parsed slide is re-bound to
        # new sources: its credentials and endpoint are the caller's, not the first opener's)
        ropts = getattr(handle, "options", None)
        path, inner = self._where(index)
        try:
            src = open_file(path, ropts) if self.array.shard is None or is_remote(path) else None
        except SourceNotFoundError:
            return b""  # a chunk not written: the fill value
        try:
            if self.array.shard is None:
                assert src is not None
                return src.pread(0, src.size)
            table = self._index(path, ropts)
            if table is None or int(table[inner, 0]) == 2**64 - 1:
                return b""
            offset, count = (int(v) for v in table[inner])
            if src is not None:
                return src.pread(offset, count)
            with builtins.open(path, "rb") as f:
                f.seek(offset)
                return f.read(count)
        finally:
            if src is not None:
                src.close()


def _codec(array: _Array, axes: list[str], plane_at: dict[str, int], samples: int) -> Codec:
    """A chunk's bytes -> (h, w, samples): decompress, view as the chunk's C-order array, take the
    plane's z and t within the chunk, channels last."""
    chunk = array.chunks
    dtype = array.dtype

    fill = np.full(chunk, array.fill, dtype)

    def dec(data: Any, h: int, w: int, out: np.ndarray | None) -> np.ndarray:
        if not len(data):  # a chunk a server does not have (zarr leaves out chunks of fill)
            a = fill
        else:
            raw = array.decompress(data) if array.decompress is not None else data
            a = np.frombuffer(raw, dtype)
        if a.size != int(np.prod(chunk)):
            raise ValueError(f"a chunk of {a.size} values, expected {int(np.prod(chunk))} ({chunk})")
        a = a.reshape(chunk)
        index = tuple(plane_at[ax] % chunk[i] if ax in ("t", "z") else slice(None)
                      for i, ax in enumerate(axes))
        a = a[index]  # the remaining axes: [c,] y, x
        if "c" not in axes:
            a = a[None]
        return np.moveaxis(a, 0, -1).astype(dtype.newbyteorder("="), copy=False)

    return Codec(f"zarr-{array.compression}", np.dtype(dtype.newbyteorder("=")), samples, dec)


def open(probe: Probe, options: Options) -> Slide:
    src = probe.source
    ropts = getattr(src, "options", None)  # a remote source's: credentials, retries, ...
    root = src.path.rsplit("/", 1)[0] if is_remote(src.path) else os.path.dirname(os.path.abspath(src.path))
    if src.path.endswith("zarr.json"):
        attrs = _json(src.path, "group metadata", ropts).get("attributes", {})
        ome = attrs.get("ome", attrs)
    else:
        attrs = _json(root + "/.zattrs", "group attributes", ropts)
        ome = attrs
    ms = (ome.get("multiscales") or [None])[0]
    if not isinstance(ms, dict):
        raise UnsupportedFormatError(f"{root}: a zarr group without OME-NGFF multiscales (a plate, labels "
                                     f"or plain arrays)")
    axes = [a["name"] if isinstance(a, dict) else a for a in ms.get("axes", [])]
    if axes[-2:] != ["y", "x"] or not set(axes) <= {"t", "c", "z", "y", "x"}:
        raise UnsupportedFormatError(f"{root}: NGFF axes {axes} (tilescope reads t, c, z, y, x)")
    units = {a["name"]: a.get("unit") for a in ms.get("axes", []) if isinstance(a, dict)}
    datasets = ms.get("datasets", [])
    if not datasets:
        raise CorruptDataError(f"{root}: multiscales lists no datasets")
    arrays = [_Array(root, d["path"], ropts) for d in datasets]
    size_of = {a: arrays[0].shape[i] for i, a in enumerate(axes)}
    nc, nz, nt = size_of.get("c", 1), size_of.get("z", 1), size_of.get("t", 1)
    specs = []
    for k, arr in enumerate(arrays):
        if len(arr.shape) != len(axes):
            raise CorruptDataError(f"{arr.dir}: {len(arr.shape)} dimensions for axes {axes}")
        dims = dict(zip(axes, arr.shape, strict=True))
        ch = dict(zip(axes, arr.chunks, strict=True))
        if any(dims.get(a, 1) != n for a, n in (("c", nc), ("z", nz), ("t", nt))):
            raise CorruptDataError(f"{arr.dir}: level {k} has other c, z or t sizes than level 0")
        w, h = dims["x"], dims["y"]
        tile = (ch["x"], ch["y"])
        grid = (-(-w // tile[0]), -(-h // tile[1]))
        cc = ch.get("c", 1)
        groups = -(-nc // cc)
        planes = {}
        for t in range(nt):
            for z in range(nz):
                at = {"t": t, "z": z}
                ps = []
                for g in range(groups):
                    fixed = {"t": t // ch.get("t", 1), "z": z // ch.get("z", 1), "c": g}
                    pieces = Chunks(arr, axes, fixed, grid, f"level {k} (z {z}, t {t}, channels {g * cc}..)")
                    ps.append(GridPlane(pieces, _codec(arr, axes, at, cc), (w, h), tile))
                planes[(z, t)] = tuple(ps)
        specs.append(((w, h), tile, Layout(planes, tuple((c // cc, c % cc) for c in range(nc)))))
    scale0 = next((t["scale"] for t in datasets[0].get("coordinateTransformations", [])
                   if t.get("type") == "scale"), None)
    step = dict(zip(axes, scale0, strict=False)) if scale0 else {}
    def physical(axis: str, table: dict[str, float]) -> float | None:  # the step in µm or s, if known
        unit = units.get(axis)
        return float(step[axis]) * table[unit] if axis in step and isinstance(unit, str) and unit in table \
            else None

    px, py = physical("x", _UM), physical("y", _UM)
    mpp = (px, py) if px is not None and py is not None else None
    z_res, t_res = physical("z", _UM), physical("t", _S)
    omero = ome.get("omero", {}).get("channels", []) if isinstance(ome.get("omero"), dict) else []
    names = [str(c.get("label") or f"C{i}") for i, c in enumerate(omero)][:nc]
    if len(names) < nc:
        names = ["R", "G", "B"] if nc == 3 and arrays[0].dtype == np.uint8 and not omero else \
            names + [f"C{i}" for i in range(len(names), nc)]
    colors = [("#" + c["color"].upper()) if isinstance(c.get("color"), str) and len(c["color"]) == 6 else None
              for c in omero][:nc] or None
    if colors is not None and len(colors) < nc:
        colors += [None] * (nc - len(colors))
    dtype = np.dtype(arrays[0].dtype.newbyteorder("="))
    brightfield = dtype == np.uint8 and arrays[0].fill == 255  # missing chunks are white
    version = ome.get("version") or ms.get("version")
    slide = Slide(src, NAME, options, vendor="ome-zarr",
                  properties={"ngff": {"version": version, "name": ms.get("name"), "axes": ",".join(axes)},
                              **({"tilescope": attrs["tilescope"]["source_properties"]}
                                 if isinstance(attrs.get("tilescope"), dict) and
                                 isinstance(attrs["tilescope"].get("source_properties"), dict) else {})})
    scene = Scene(slide, name=str(ms.get("name") or "image"), levels=make_levels(specs), channel_names=names,
                  channel_colors=colors, dtype=dtype, mpp=mpp, num_z_slices=nz, num_t_frames=nt,
                  z_resolution=z_res,
                  t_resolution=t_res, compression={"gzip": "deflate", "zlib": "deflate"}.get(
                      arrays[0].compression, arrays[0].compression), compression_raw=arrays[0].compression,
                  brightfield=brightfield)
    slide.set_contents([scene], {})
    return slide
