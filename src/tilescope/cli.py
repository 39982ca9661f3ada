"""The ``tilescope`` command: ``info``, ``thumbnail``, ``region`` and ``tiles``.

    tilescope info slide.svs [--json]
    tilescope thumbnail slide.svs thumb.png [--max-size 1024]
    tilescope region slide.svs out.png --rect 1000,2000,512,512 [--size 256,0] [--scene 0]
                     [--channels 0,2] [--z 0] [--t 0]
    tilescope tiles a.svs b.svs --out patches --size 256 [--mpp 0.5 | --magnification 20]
                    [--overlap N] [--tissue 0.5] [--format png|jpeg|npy|zarr] [--scheduler ADDR]

Region and thumbnail files are written by extension: .png/.jpg through Pillow (uint8, or uint16
grey), .tif/.tiff through tifffile (any type and channel count), .npy as the raw array.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import Slide, TilescopeError
from . import open as open_slide
from .export import FORMATS, save


def _ints(text: str, n: int | None, what: str) -> tuple[int, ...]:
    try:
        v = tuple(int(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got {text!r}") from None
    if n is not None and len(v) != n:
        raise argparse.ArgumentTypeError(f"{what} needs {n} values, got {text!r}")
    return v


def _plane(text: str) -> int | tuple[int, ...]:
    v = _ints(text, None, "plane")
    return v[0] if len(v) == 1 else v


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
    p = sub.add_parser("thumbnail", help="write a thumbnail of a scene")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--max-size", type=int, default=1024)
    p.add_argument("--scene", default="0")
    p = sub.add_parser("region", help="write a region of a scene at any output size")
    p.add_argument("path")
    p.add_argument("out")
    p.add_argument("--rect", type=lambda t: _ints(t, 4, "--rect"), default=None, help="x,y,w,h (level 0)")
    p.add_argument("--size", type=lambda t: _ints(t, 2, "--size"), default=None, help="w,h (0 keeps aspect)")
    p.add_argument("--scene", default="0")
    p.add_argument("--channels", type=lambda t: _ints(t, None, "--channels"), default=None)
    p.add_argument("--z", type=_plane, default=0, help="index or start,stop")
    p.add_argument("--t", type=_plane, default=0, help="index or start,stop")
    p.add_argument("--frames", type=lambda t: _ints(t, 2, "--frames"), default=None,
                   help="start,stop: raw frames in file order (stacks such as ScanImage), as (n, h, w)")
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
    a = ap.parse_args(argv)
    if a.cmd == "tiles":
        return _tiles(a)
    try:
        with open_slide(a.path) as slide:
            if a.cmd == "info":
                if a.json:
                    print(json.dumps(slide.metadata, indent=1))
                elif a.raw:
                    print(slide.raw_metadata)
                else:
                    print(_info(slide))
                return 0
            scene = slide.scene(int(a.scene) if a.scene.lstrip("-").isdigit() else a.scene)
            if a.cmd == "thumbnail":
                w, h = scene.size
                size = (a.max_size, 0) if w >= h else (0, a.max_size)
                arr = scene.read(size=size)
            elif a.frames is not None:
                if not hasattr(scene, "raw_frames"):
                    raise TilescopeError(f"{a.path}: {slide.driver} has no raw frame sequence (--frames)")
                arr = scene.raw_frames(*a.frames)
                if not a.out.lower().endswith((".tif", ".tiff", ".npy")):
                    raise TilescopeError(f"{a.out}: frames are 3-D data: write .tiff or .npy")
            else:
                arr = scene.read(a.rect, a.size, channels=a.channels, z=a.z, t=a.t)
                if arr.ndim > 3 and not a.out.lower().endswith((".tif", ".tiff", ".npy")):
                    raise TilescopeError(f"{a.out}: a z or t range gives {arr.ndim}-D data: "
                                         f"write .tiff or .npy")
            save(a.out, arr)
            print(f"wrote {a.out}: {arr.shape} {arr.dtype}")
            return 0
    except TilescopeError as e:
        print(f"tilescope: error: {e}", file=sys.stderr)
        return 1


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
                             workers=a.workers)
    except ImportError as e:
        print(f"tilescope: error: tiles needs the [dask] extra (pip install 'tilescope[dask]'): {e}",
              file=sys.stderr)
        return 1
    except TilescopeError as e:
        print(f"tilescope: error: {e}", file=sys.stderr)
        return 1
    print(f"{a.out}: {n['done']} slide(s) exported ({n['tiles']} tiles), {n['skipped']} already complete")
    return 0


if __name__ == "__main__":
    sys.exit(main())
