"""A scene's pyramid as a read-only zarr v3 store (extra ``[dask]``): a layer over the public Scene
API. The store is an OME-NGFF 0.5 multiscales image: a group whose ``ome`` attributes describe
arrays ``"0"``, ``"1"``, ... (one per level, finest first), axes ``[t,] c, [z,] y, x`` as NGFF
orders them, one chunk per stored tile with every channel, uncompressed (the ``bytes`` codec):
each chunk key is one engine read, the bytes handed over as they come. Chunks past a level's
edge are padded with the scene's background, as zarr stores edge chunks; missing tiles of sparse
formats read as background, never as a missing key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Literal

import numpy as np
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

if TYPE_CHECKING:
    from .model import Scene


class SceneStore(Store):
    """``zarr.open_group(scene.zarr_store(), mode="r")``; also ``dask.array.from_zarr(store, "0")``.
    Pickles as its scene (what to open)."""

    def __init__(self, scene: Scene):
        super().__init__(read_only=True)
        self.scene = scene
        # per level: its axes, chunk grid, chunk shape and shape
        self._levels = [_grid(scene, i) for i in range(len(scene.levels))]
        self._meta = _metadata(scene, self._levels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SceneStore) and other.scene is self.scene

    def __hash__(self) -> int:
        return id(self.scene)

    def __repr__(self) -> str:
        return f"<SceneStore {self.scene.location}>"

    @property
    def supports_writes(self) -> bool:
        return False

    @property
    def supports_deletes(self) -> bool:
        return False

    @property
    def supports_partial_writes(self) -> Literal[False]:
        return False

    @property
    def supports_listing(self) -> bool:
        return True

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()

    async def delete(self, key: str) -> None:
        self._check_writable()

    async def exists(self, key: str) -> bool:
        return key in self._meta or self._chunk(key) is not None

    async def get(self, key: str, prototype: BufferPrototype | None = None,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        prototype = prototype or default_buffer_prototype()
        data = self._meta.get(key)
        if data is None:
            where = self._chunk(key)
            if where is None:
                return None
            # a thread per chunk: zarr asks for many at once, and the engine decodes off the loop
            data = await asyncio.to_thread(self._read, *where)
        return prototype.buffer.from_bytes(_cut(data, byte_range))

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Iterable[tuple[str, ByteRequest | None]]) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def list(self) -> AsyncIterator[str]:
        for key in self._meta:
            yield key
        for i, (_, grid, _, _) in enumerate(self._levels):
            for idx in np.ndindex(*grid):
                yield f"{i}/c/" + "/".join(map(str, idx))

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        async for key in self.list():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        seen = set()
        async for key in self.list_prefix(prefix + "/" if prefix else ""):
            child = key[len(prefix) + 1 if prefix else 0:].split("/", 1)[0]
            if child not in seen:
                seen.add(child)
                yield child

    # -- chunks ---------------------------------------------------------------------------------
    def _chunk(self, key: str) -> tuple[int, tuple[int, ...]] | None:
        """(level, chunk index) of a chunk key inside a level's grid, else None."""
        level, sep, rest = key.partition("/c/")
        if not sep or not level.isdigit() or int(level) >= len(self._levels):
            return None
        _, grid, _, _ = self._levels[int(level)]
        parts = rest.split("/")
        if len(parts) != len(grid) or not all(p.isdigit() for p in parts):
            return None
        idx = tuple(int(p) for p in parts)
        return (int(level), idx) if all(i < n for i, n in zip(idx, grid, strict=True)) else None

    def _read(self, level: int, idx: tuple[int, ...]) -> bytes:
        axes, _, chunk, _ = self._levels[level]
        at = dict(zip(axes, idx, strict=True))
        th, tw = chunk[-2:]
        a = self.scene.read_level(level, (at["x"] * tw, at["y"] * th, tw, th), channels=None,
                                  z=at.get("z", 0), t=at.get("t", 0), threads=1)
        a = np.moveaxis(a, -1, 0)  # (h, w, c) -> (c, h, w)
        return np.ascontiguousarray(a.reshape(chunk), a.dtype.newbyteorder("<")).tobytes()


def _cut(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start:byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset:]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix:]
    raise TypeError(f"unexpected byte range {byte_range!r}")


def ngff_axes(num_z: int, num_t: int) -> list[str]:
    """NGFF axes of an image: [t,] c, [z,] y, x (t and z where there is more than one)."""
    return ["t"] * (num_t > 1) + ["c"] + ["z"] * (num_z > 1) + ["y", "x"]


def _axes(scene: Scene) -> list[str]:
    return ngff_axes(scene.num_z_slices, scene.num_t_frames)


def _grid(scene: Scene, level: int) -> tuple[list[str], tuple[int, ...], tuple[int, ...], list[int]]:
    """(axes, chunks per axis, chunk shape, array shape) of one level."""
    axes = _axes(scene)
    (w, h), (tw, th) = scene.levels[level].size, scene.levels[level].tile_size
    chunk = {"t": 1, "c": scene.image_channels, "z": 1, "y": min(th, h), "x": min(tw, w)}
    size = {"t": scene.num_t_frames, "c": scene.image_channels, "z": scene.num_z_slices, "y": h, "x": w}
    return (axes, tuple(-(-size[a] // chunk[a]) for a in axes), tuple(chunk[a] for a in axes),
            [size[a] for a in axes])


def ngff_attributes(name: str, axes: list[str], level_scales: list[tuple[float, float]],
                    mpp: tuple[float, float] | None, z_resolution: float | None, t_resolution: float | None,
                    channels: list[tuple[str, str | None]], dtype: np.dtype, version: str = "0.5") -> dict:
    """An OME-NGFF image's group attributes: multiscales (a dataset per level, its scale from the
    level's (x, y) factor to level 0 and the physical steps in µm and s where known) and omero
    channels (names, colours, the dtype's full range as window). 0.5 (zarr v3) puts them under
    ``ome``; 0.4 (zarr v2) at the top with the version in the multiscales."""
    known = {"t": t_resolution, "z": z_resolution, "y": mpp, "x": mpp}
    units = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    ngff_axes = [{"name": a, "type": "channel" if a == "c" else "time" if a == "t" else "space",
                  **({"unit": units[a]} if known.get(a) is not None else {})} for a in axes]
    mx, my = mpp or (1.0, 1.0)
    datasets = [{"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [
        float({"t": t_resolution or 1.0, "c": 1.0, "z": z_resolution or 1.0, "y": my * sy, "x": mx * sx}[a])
        for a in axes]}]} for i, (sx, sy) in enumerate(level_scales)]
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    window = {"min": info.min, "max": info.max, "start": info.min, "end": info.max} if info else \
        {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
    omero = {"channels": [{"label": label, "color": (color or "#FFFFFF").lstrip("#").upper(), "active": True,
                           "window": window} for label, color in channels]}
    multiscales = {"name": name, "axes": ngff_axes, "datasets": datasets}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscales}], "omero": omero}
    return {"ome": {"version": "0.5", "multiscales": [multiscales], "omero": omero}}


def _metadata(scene: Scene, levels: list[tuple]) -> dict[str, bytes]:
    """zarr.json of the group (NGFF 0.5 multiscales, omero channels) and of each level's array."""
    axes = _axes(scene)
    dtype = scene.dtype
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    channels = list(zip(scene.channel_names[:scene.image_channels], scene.channel_colors, strict=False))
    group = {"zarr_format": 3, "node_type": "group", "attributes": ngff_attributes(
        scene.name, axes, [lv.scale for lv in scene.levels], scene.mpp, scene.z_resolution,
        scene.t_resolution, channels, dtype)}
    fill = scene.background
    out = {"zarr.json": json.dumps(group).encode()}
    for i, (_, _, chunk, shape) in enumerate(levels):
        array = {"zarr_format": 3, "node_type": "array", "shape": shape,
                 "data_type": dtype.name,
                 "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
                 "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
                 "fill_value": fill if info is None else int(fill),
                 "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
                 "dimension_names": axes, "attributes": {}}
        out[f"{i}/zarr.json"] = json.dumps(array).encode()
    return out
