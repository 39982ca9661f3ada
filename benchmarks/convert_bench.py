#!/usr/bin/env python3
"""Converting the bench SVS to a pyramidal tiled TIFF: tilescope against its peers.

    python benchmarks/convert_bench.py [--slide benchmarks/data/slide.svs] [--rounds 2]

Each cell is a fresh process (wall seconds, peak RSS from the kernel), rounds interleaved across
the writers; outputs go to a temporary folder beside the slide and are deleted. JPEG Q90, 512 px
tiles, levels halving down to one tile:

- tilescope: ``tilescope.write`` to OME-TIFF (SubIFD levels), re-encoded; and passthrough (the
  SVS's JPEG tiles copied, its own levels);
- pyvips: ``tiffsave(tile=True, pyramid=True, subifd=True, compression="jpeg", Q=90, bigtiff=True)``
  of the slide opened by libvips (its TIFF loader: the pyvips wheel has no openslide);
- large_image_converter (its defaults for a slide: JPEG Q90, 512 px tiles... through its GDAL/vips
  tools);
- tifffile by hand: level 0 tiles read with tiffslide, each lower level read at its scale with
  tiffslide and halved from the nearest stored level with Pillow, written with tifffile
  (maxworkers = cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

WRITERS = {
    "tilescope": """
import tilescope
from tilescope.writer import write
write(tilescope.open(SRC), OUT + ".ome.tif", tile_size=512, quality=90)
""",
    "tilescope passthrough": """
import tilescope
from tilescope.writer import write
write(tilescope.open(SRC), OUT + ".ome.tif", compression="passthrough")
""",
    "tilescope OME-Zarr": """
import tilescope
from tilescope.writer import write
write(tilescope.open(SRC), OUT + ".ome.zarr", tile_size=512)
""",
    "ome-zarr write_image (tiffslide zarr + dask)": """
import dask.array as da, tiffslide, zarr
from ome_zarr.writer import write_image
from ome_zarr.scale import Scaler
s = tiffslide.TiffSlide(SRC)
a = da.from_zarr(s.zarr_group["0"]).rechunk((512, 512, 3)).transpose(2, 0, 1)
n = 1
while max(a.shape[1:]) / 2 ** (n - 1) > 512:
    n += 1
root = zarr.open_group(OUT + ".ome.zarr", mode="w", zarr_format=3)
write_image(a, root, axes="cyx", scaler=Scaler(max_layer=n - 1, method="local_mean"),
            storage_options={"chunks": (3, 512, 512)})
""",
    "pyvips": """
import pyvips
im = pyvips.Image.new_from_file(SRC, access="sequential")
im.tiffsave(OUT + ".tif", tile=True, tile_width=512, tile_height=512, pyramid=True, subifd=True,
            compression="jpeg", Q=90, bigtiff=True)
""",
    "large_image_converter": """
import subprocess, sys, os
exe = os.path.join(os.path.dirname(sys.executable), "large_image_converter")
subprocess.run([exe, SRC, OUT + ".tiff", "--compression", "jpeg", "--quality", "90", "--tile", "512"],
               check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
""",
    "tifffile + tiffslide": """
import os, numpy as np, tifffile, tiffslide
from PIL import Image
s = tiffslide.TiffSlide(SRC)
W, H = s.dimensions
sizes = [(W, H)]
while max(sizes[-1]) > 512:
    sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
def tiles(k):
    w, h = sizes[k]
    ds = W / w
    lvl = s.get_best_level_for_downsample(ds)
    f = ds / s.level_downsamples[lvl]
    for y in range(0, h, 512):
        for x in range(0, w, 512):
            side = int(round(512 * f))
            a = s.read_region((int(x * ds), int(y * ds)), lvl, (side, side), as_array=True)[..., :3]
            if side != 512:
                a = np.asarray(Image.fromarray(a).resize((512, 512), Image.Resampling.BOX))
            yield a
with tifffile.TiffWriter(OUT + ".ome.tif", bigtiff=True, ome=True) as tw:
    opts = dict(tile=(512, 512), compression="jpeg", compressionargs={"level": 90}, photometric="rgb",
                maxworkers=os.cpu_count(), dtype=np.uint8)
    tw.write(tiles(0), shape=(H, W, 3), subifds=len(sizes) - 1, **opts)
    for k in range(1, len(sizes)):
        tw.write(tiles(k), shape=(sizes[k][1], sizes[k][0], 3), subfiletype=1, **opts)
""",
}


# "huge": a 100000x80000 RGB image made tile by tile (no file behind it), to OME-TIFF: the memory bound
HUGE = """
import numpy as np
from tilescope.writer import write

class Huge:  # what write() reads of an array: shape, dtype, ndim, slicing
    shape, dtype, ndim = (80000, 100000, 3), np.dtype(np.uint8), 3
    def __getitem__(self, key):
        ys, xs, cs = key
        yy, xx = np.mgrid[ys, xs]
        a = np.stack([(xx >> 4) & 255, (yy >> 4) & 255, (xx ^ yy) & 255], axis=-1).astype(np.uint8)
        return a[..., cs]
write(Huge(), OUT + ".ome.tif", mpp=0.25, tile_size=512, quality=90)
"""


def cell(code: str, src: str, out: str) -> tuple[float, float] | None:
    """One fresh process: (wall seconds, peak RSS MB), or None if it failed."""
    prog = f"SRC, OUT = {src!r}, {out!r}\n" + code
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode:
        print(r.stderr[-800:], file=sys.stderr)
        return None
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest child so far
    return wall, rss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=os.path.join(HERE, "data", "slide.svs"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--writers", default=",".join(WRITERS))
    ap.add_argument("--huge", action="store_true", help="also a 100000x80000 image: time and peak RSS")
    a = ap.parse_args()
    names = a.writers.split(",")
    res: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    tmp = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(a.slide)), prefix="convert-bench-")
    try:
        cells = [n for _ in range(a.rounds) for n in names] + (["huge"] if a.huge else [])
        if a.huge:
            names.append("huge")
            res["huge"] = []
        for n in cells:
            # the peak RSS of one child: measured in a fresh runner process per cell
            code = "cb.HUGE" if n == "huge" else f"cb.WRITERS[{n!r}]"
            probe = (f"import sys, json; sys.path.insert(0, {HERE!r}); import convert_bench as cb; "
                     f"print(json.dumps(cb.cell({code}, {a.slide!r}, {os.path.join(tmp, 'out')!r})))")
            r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
            v = json.loads(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "null")
            if v:
                res[n].append((v[0], v[1]))
            print(n, v, f"load {os.getloadavg()[0]:.2f}", flush=True)
            shutil.rmtree(tmp)
            os.mkdir(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = min(v[0] for v in res["tilescope"]) if res.get("tilescope") else None
    print("\n| writer | wall s (median) | min | peak RSS MB | min wall / tilescope's |")
    print("|---|---|---|---|---|")
    for n in names:
        if not res[n]:
            print(f"| {n} | failed | | | |")
            continue
        walls = [w for w, _ in res[n]]
        ratio = f"{min(walls) / base:.2f}" if base else ""
        rss = max(r for _, r in res[n])
        print(f"| {n} | {statistics.median(walls):.1f} | {min(walls):.1f} | {rss:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
