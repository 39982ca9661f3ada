"""The ``tilescope`` command: ``info``, ``thumbnail``, ``region`` and ``tiles``.

    tilescope info slide.svs [--json] [--raw]
    tilescope thumbnail slide.svs thumb.png [--max-size 1024 | --size 2048]
    tilescope region slide.svs out.png [--rect 1000,2000,512,512 [--units px|um|mm]] [--size 256,0 |
                     --level 2 | --mpp 2.0 | --magnification 5] [--scene 0] [--channels DAPI,FITC]
                     [--z 0] [--t 0] [--study UID --series UID]
    tilescope tiles a.svs b.svs --out patches --size 256 [--mpp 0.5 | --magnification 20]
                    [--overlap N] [--tissue 0.5] [--format png|jpeg|npy|zarr] [--scheduler ADDR]

Region and thumbnail files are written by extension: .png/.jpg as 8-bit RGB or grey (scenes that
are not 8-bit RGB composited with their channel colours and display windows: tilescope.display),
.tif/.tiff through tifffile (the samples as stored: any type and channel count), .npy as the raw
array. Errors print one line naming the file and the problem: exit status 1 for a failed read, 2
for a wrong command line. Output into a closed pipe (``| head``) ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import Scene, Slide, TilescopeError
from . import open as open_slide
from .display import Display
from .export import FORMATS, save
from .units import Scale

_RAW = (".tif", ".tiff", ".npy")  # outputs that take the samples as stored


def _numbers(text: str, n: int | None, what: str, kind: type = int) -> tuple:
    """Comma-separated numbers of ``kind`` (int, or float for --rect), ``n`` of them if given."""
    try:
        v = tuple(kind(p) for p in text.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated {noun}, got {text!r}") from None
    if n is not None and len(v) != n:
        raise argparse.ArgumentTypeError(f"{what} needs {n} values, got {text!r}")
    return v


def _plane(text: str) -> int | tuple[int, ...]:
    v = _numbers(text, None, "plane")
    return v[0] if len(v) == 1 else v


def _channels(text: str) -> list[int | str]:
    """--channels: indices or names, comma-separated."""
    return [int(p) if p.strip().lstrip("-").isdigit() else p.strip() for p in text.split(",")]


def _shown(arr: np.ndarray, scene: Scene, out: str, channels: list[int] | None, z: Any, t: Any) -> np.ndarray:
    """What an image file (.png, .jpg) gets: 8-bit RGB as read, anything else composited."""
    if out.lower().endswith(_RAW) or arr.ndim != 3:
        return arr
    display = Display(scene, channels, z if isinstance(z, int) else 0, t if isinstance(t, int) else 0)
    return arr if display.plain and arr.shape[-1] == 3 else display(arr)


def _info(slide: Slide) -> str:
    lines = [f"{slide.path}", f"  driver: {slide.driver}   vendor: {slide.vendor or '-'}"]
    for i, sc in enumerate(slide.scenes):
        mpp = f"{sc.mpp[0]:.4g} x {sc.mpp[1]:.4g} um/px" if sc.mpp else "unknown"
        lines += [
            f"  scene {i} {sc.name!r}: {sc.size[0]} x {sc.size[1]} px, {sc.num_channels} channel(s) "
            f"{', '.join(sc.channel_names)}, {sc.dtype}, {sc.compression}",
            f"    mpp: {mpp}   magnification: {sc.magnification or 'unknown'}   "
            f"z: {sc.num_z_slices}   t: {sc.num_t_frames}",
        ]
        acq = getattr(sc, "acquisition", None)  # stacks: frames and key acquisition settings
        if acq:
            items = (f"{k}: {v}" for k, v in acq.items() if v is not None)
            lines.append("    acquisition: " + "   ".join(items))
        for lv in sc.levels:
            lines.append(f"    level {lv.index}: {lv.size[0]} x {lv.size[1]}  "
                         f"downsample {lv.downsample:.4g}  tiles {lv.tile_size[0]} x {lv.tile_size[1]}")
    for name in slide.associated:
        w, h = slide.associated.size(name)
        lines.append(f"  associated {name}: {w} x {h}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tilescope", description="Read whole-slide and microscopy images.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("info", help="print format, scenes, levels and metadata")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="normalized metadata as JSON")
    p.add_argument("--raw", action="store_true", help="the format's own metadata text")
    p = sub.add_parser("thumbnail", help="write a thumbnail of a scene (never larger than the scene)")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--max-size", type=int, default=1024, help="longest side, at most (default 1024)")
    p.add_argument("--size", type=int, default=None, help="longest side exactly (may enlarge)")
    p.add_argument("--scene", default="0")
    p = sub.add_parser("region", help="write a region of a scene at any output size")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--rect", type=lambda t: _numbers(t, 4, "--rect", float), default=None,
                   help="x,y,w,h in --units (default: level-0 pixels)")
    p.add_argument("--units", choices=("px", "um", "mm"), default="px", help="what --rect is given in")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--size", type=lambda t: _numbers(t, 2, "--size"), default=None,
                     help="w,h (0 keeps aspect)")
    out.add_argument("--level", type=int, default=None, help="a level's own pixels")
    out.add_argument("--mpp", type=float, default=None, help="µm per output pixel")
    out.add_argument("--magnification", type=float, default=None, help="output at this objective power")
    p.add_argument("--scene", default="0")
    p.add_argument("--channels", type=_channels, default=None, help="indices or names: 0,2 or DAPI,FITC")
    p.add_argument("--study", default=None, help="DICOMweb: the study's UID")
    p.add_argument("--series", default=None, help="DICOMweb: the series' UID")
    p.add_argument("--z", type=_plane, default=0, help="index or start,stop")
    p.add_argument("--t", type=_plane, default=0, help="index or start,stop")
    p.add_argument("--frames", type=lambda t: _numbers(t, 2, "--frames"), default=None,
                   help="start,stop: raw frames in file order (stacks such as ScanImage), as (n, h, w)")
    p = sub.add_parser("serve", help="serve the slides under a folder over HTTP: Deep Zoom, IIIF, JSON")
    p.add_argument("root")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--public", action="store_true", help="allow binding an address other than loopback")
    p.add_argument("--token", default=None, help="require ?token=TOKEN or 'Authorization: Bearer TOKEN'")
    p.add_argument("--allow-host", action="append", default=None,
                   help="a Host header to accept besides the bound address (repeat for more)")
    p.add_argument("--cors", action="store_true", help="let pages of other origins fetch (default: off)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of tiles (default 90)")
    p.add_argument("--cache", type=int, default=None, help="decoded-tile cache in MiB (default 64; 0: off)")
    from .writer import COMPRESSIONS as write_compressions
    from .writer import FORMATS as write_formats

    p = sub.add_parser("convert", help="write a slide as OME-TIFF, tiled TIFF, SVS, OME-Zarr or DICOM")
    p.add_argument("path")
    p.add_argument("out", help="its suffix picks the format: .ome.tif(f), .tif(f), .svs, .zarr, .dcm")
    p.add_argument("--format", choices=write_formats, default=None)
    p.add_argument("--tile-size", type=int, default=512)
    p.add_argument("--compression", default=None, choices=write_compressions,
                   help="default jpeg (zstd for OME-Zarr)")
    p.add_argument("--quality", type=int, default=90,
                   help="JPEG / JPEG 2000 / JPEG XL quality (100: lossless JPEG 2000 and JPEG XL)")
    p.add_argument("--levels", type=int, default=None, help="pyramid levels (default: down to one tile)")
    p.add_argument("--shards", type=int, default=None, help="OME-Zarr v3: shards of N x N tiles")
    p.add_argument("--scene", default="0", help="index or name; all: every scene, OUT-<index> each")
    p.add_argument("--channels", type=_channels, default=None, help="indices or names: 0,2 or DAPI,FITC")
    p.add_argument("--workers", type=int, default=None, help="encoding threads (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("tiles", help="export the tiles of many slides (patches), with a manifest")
    p.add_argument("slides", nargs="+")
    p.add_argument("--out", required=True, help="folder: OUT/<slide>/ per slide, OUT/manifest.csv")
    p.add_argument("--size", type=int, default=256, help="tile width and height in output pixels")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--mpp", type=float, default=None, help="µm per output pixel")
    scale.add_argument("--magnification", type=float, default=None)
    p.add_argument("--overlap", type=int, default=0, help="pixels of context on every side")
    p.add_argument("--tissue", type=float, default=None, help="keep tiles at least this much tissue")
    p.add_argument("--format", choices=FORMATS, default="png")
    p.add_argument("--scheduler", default=None, help="a dask.distributed scheduler address "
                   "(default: a local cluster, one process per core); OUT must be shared with its workers")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no notes, no summary")
    a = ap.parse_args(argv)
    try:
        return _run(a)
    except BrokenPipeError:  # the reader went away (| head): end quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a tool that SIGPIPE ended


def _run(a: argparse.Namespace) -> int:
    if a.cmd == "tiles":
        return _tiles(a)
    if a.cmd == "serve":
        return _serve(a)
    if a.cmd == "convert":
        return _convert(a)
    try:
        kw = {k: v for k in ("study", "series") if (v := getattr(a, k, None)) is not None}
        with open_slide(a.path, **kw) as slide:
            if a.cmd == "info":
                if a.json:  # the normalized metadata (Slide.metadata), with the raw text if asked
                    doc = {"path": slide.path, **slide.metadata}
                    if a.raw:
                        doc["raw_metadata"] = slide.raw_metadata
                    print(json.dumps(doc, indent=1))
                elif a.raw:
                    print(slide.raw_metadata)
                else:
                    print(_info(slide))
                return 0
            scene = slide.scene(int(a.scene) if a.scene.lstrip("-").isdigit() else a.scene)
            if a.cmd == "thumbnail":
                w, h = scene.size
                side = a.size if a.size is not None else min(a.max_size, max(w, h))  # never enlarged
                arr = _shown(scene.read(size=(side, 0) if w >= h else (0, side)), scene, a.out, None, 0, 0)
            elif a.frames is not None:
                if not hasattr(scene, "raw_frames"):
                    raise TilescopeError(f"{a.path}: {slide.driver} has no raw frame sequence (--frames)")
                arr = scene.raw_frames(*a.frames)
                if not a.out.lower().endswith((".tif", ".tiff", ".npy")):
                    raise TilescopeError(f"{a.out}: frames are 3-D data: write .tiff or .npy")
            else:
                channels = scene.channel_indices(a.channels) if a.channels is not None else None
                if a.level is not None:
                    rect = a.rect if a.rect is not None else (0, 0, *scene.size)
                    box = scene.convert(rect, "px" if a.rect is None else a.units, Scale(level=a.level))
                    arr = scene.read_level(a.level, tuple(round(v) for v in box), channels=channels,
                                           z=a.z, t=a.t)
                else:
                    arr = scene.read(a.rect, a.size, channels=channels, z=a.z, t=a.t, units=a.units,
                                     mpp=a.mpp, magnification=a.magnification)
                if arr.ndim > 3 and not a.out.lower().endswith(_RAW):
                    raise TilescopeError(f"{a.out}: a z or t range gives {arr.ndim}-D data: "
                                         f"write .tiff or .npy")
                arr = _shown(arr, scene, a.out, channels, a.z, a.t)
            save(a.out, arr)
            print(f"wrote {a.out}: {arr.shape} {arr.dtype}")
            return 0
    except (TilescopeError, OSError) as e:  # OSError: the output could not be written
        if isinstance(e, BrokenPipeError):
            raise
        print(f"tilescope: error: {e}", file=sys.stderr)
        return 1


def _serve(a: argparse.Namespace) -> int:
    import ipaddress

    try:
        loopback = a.host == "localhost" or ipaddress.ip_address(a.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not a.public:
        print(f"tilescope: error: {a.host} is not a loopback address: add --public to serve other machines "
              f"(and --token to require a token)", file=sys.stderr)
        return 2
    if not os.path.isdir(a.root):
        print(f"tilescope: error: {a.root}: not a folder", file=sys.stderr)
        return 1
    try:
        import uvicorn

        from .server import create_app
    except ImportError as e:
        print(f"tilescope: error: serve needs the [server] extra (pip install 'tilescope[server]'): {e}",
              file=sys.stderr)
        return 1
    if not loopback:
        print(f"tilescope: warning: serving {a.root} to every machine that reaches {a.host}:{a.port}"
              + ("" if a.token else " without a token"), file=sys.stderr)
    hosts = [a.host, f"{a.host}:{a.port}", "localhost", "127.0.0.1", *(a.allow_host or [])]
    from . import options

    # concurrent requests keep the cores busy: each read decodes on its request's thread (helper
    # threads per read would only contend with the other requests)
    options.threads = 1
    if a.cache is not None:
        from . import set_cache_size

        set_cache_size(a.cache << 20)
    app = create_app(a.root, allowed_hosts=hosts, token=a.token, cors=a.cors, quality=a.quality)
    print(f"serving {a.root} on http://{a.host}:{a.port}/api/slides", file=sys.stderr, flush=True)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


def _tiles(a: argparse.Namespace) -> int:
    import contextlib

    try:
        from .export import export_tiles

        with contextlib.ExitStack() as stack:
            client = None
            if a.scheduler:
                from dask.distributed import Client

                client = stack.enter_context(Client(a.scheduler))
            n = export_tiles(a.slides, a.out, tile_size=a.size, overlap=a.overlap, mpp=a.mpp,
                             magnification=a.magnification, tissue=a.tissue, format=a.format, client=client,
                             workers=a.workers, progress=False if a.quiet else None,
                             log=(lambda msg: None) if a.quiet else None)
    except ImportError as e:
        print(f"tilescope: error: tiles needs the [dask] extra (pip install 'tilescope[dask]'): {e}",
              file=sys.stderr)
        return 1
    except TilescopeError as e:
        print(f"tilescope: error: {e}", file=sys.stderr)
        return 1
    if not a.quiet:
        print(f"{a.out}: {n['done']} slide(s) exported ({n['tiles']} tiles), {n['skipped']} already complete")
    return 0


def _convert(a: argparse.Namespace) -> int:
    from .writer import write

    try:
        with open_slide(a.path) as slide:
            if a.scene == "all":
                scenes = list(slide.scenes)
            else:
                scenes = [slide.scene(int(a.scene) if a.scene.lstrip("-").isdigit() else a.scene)]
            for scene in scenes:
                out = a.out
                if len(scenes) > 1:  # x.ome.tif -> x-0.ome.tif, x-1.ome.tif, ...
                    stem, dot, rest = os.path.basename(out).partition(".")
                    out = os.path.join(os.path.dirname(out), f"{stem}-{scene.index}{dot}{rest}")
                write(scene, out, format=a.format, tile_size=a.tile_size, compression=a.compression,
                      quality=a.quality, levels=a.levels or "auto", channels=a.channels, workers=a.workers,
                      shards=a.shards, progress=False if a.quiet else None)
                if not a.quiet:
                    print(out, file=sys.stderr)
    except TilescopeError as e:
        print(f"tilescope: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
