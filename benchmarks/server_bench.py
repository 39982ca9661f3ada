#!/usr/bin/env python3
"""`tilescope serve` against openslide-python's Deep Zoom example server on the same slide.

    python benchmarks/server_bench.py [--clients 16] [--seconds 30] [--slide benchmarks/data/slide.svs]

Load: N concurrent clients (threads, one keep-alive connection each) fetch random Deep Zoom tiles
(JPEG, 254 px, overlap 1, from the 3 finest levels) for a fixed time from each server in turn,
both on 127.0.0.1; tiles/s and per-tile p50/p99 latency. The openslide server is the
deepzoom_multiserver.py example's design, written here (not copied: it is not in the package):
Flask's threaded server, one openslide DeepZoomGenerator per slide, JPEG quality 75 (the example's
defaults). Cold tiles: tiles no cache holds, through tilescope's server with its tile cache off,
against openslide's DeepZoomGenerator.get_tile called directly in this process (and
tilescope.openslide's generator for reference). Requests go only to 127.0.0.1 and stop by
themselves after --seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tools import servers  # noqa: E402  (the repository's real servers on loopback)

OPENSLIDE_SERVER = """
import os, sys
from io import BytesIO
from flask import Flask, abort, make_response
import openslide
from openslide.deepzoom import DeepZoomGenerator

root, port = sys.argv[1], int(sys.argv[2])
app = Flask(__name__)
generators = {}

def generator(path):
    if path not in generators:
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            abort(404)
        generators[path] = DeepZoomGenerator(openslide.OpenSlide(full), 254, 1, False)
    return generators[path]

@app.route("/<path:path>.dzi")
def dzi(path):
    resp = make_response(generator(path).get_dzi("jpeg"))
    resp.mimetype = "application/xml"
    return resp

@app.route("/<path:path>_files/<int:level>/<int:col>_<int:row>.<fmt>")
def tile(path, level, col, row, fmt):
    try:
        image = generator(path).get_tile(level, (col, row))
    except ValueError:
        abort(404)
    buf = BytesIO()
    image.save(buf, "jpeg", quality=75)
    resp = make_response(buf.getvalue())
    resp.mimetype = "image/jpeg"
    return resp

app.run(host="127.0.0.1", port=port, threaded=True)
"""


@contextlib.contextmanager
def openslide_server(root: str) -> Iterator[str]:
    port = servers.free_port()
    with servers.running([sys.executable, "-c", OPENSLIDE_SERVER, root, str(port)], port,
                         "the openslide example server") as url:
        yield url


def tile_paths(prefix: str, slide: str, n: int, seed: int = 0) -> list[str]:
    """Random tiles of the 3 finest Deep Zoom levels (254 px, overlap 1)."""
    from tilescope.openslide import OpenSlide
    from tilescope.openslide.deepzoom import DeepZoomGenerator

    with OpenSlide(slide) as s:
        dz = DeepZoomGenerator(s, 254, 1, False)
        rng = random.Random(seed)
        out = []
        for _ in range(n):
            level = dz.level_count - 1 - rng.randrange(3)
            cols, rows = dz.level_tiles[level]
            out.append(f"{prefix}_files/{level}/{rng.randrange(cols)}_{rng.randrange(rows)}.jpeg")
        return out


def cold(base: str, paths: list[str], slide: str) -> dict:
    """ms per tile no cache holds: over HTTP from ``base`` (its cache off), and by openslide's and
    tilescope.openslide's DeepZoomGenerator.get_tile in this process."""
    import openslide
    from openslide.deepzoom import DeepZoomGenerator as OsDZ

    from tilescope import openslide as ts_openslide
    from tilescope.openslide.deepzoom import DeepZoomGenerator as TsDZ

    host, port = base.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    out: dict[str, list[float]] = {"server": [], "openslide get_tile": [], "tilescope get_tile": []}
    ours = ts_openslide.OpenSlide(slide)
    ours.set_cache(ts_openslide.OpenSlideCache(0))
    os_slide = openslide.OpenSlide(slide)
    os_slide.set_cache(openslide.OpenSlideCache(0))
    gens = {"openslide get_tile": OsDZ(os_slide, 254, 1, False),
            "tilescope get_tile": TsDZ(ours, 254, 1, False)}
    for p in paths:
        t0 = time.perf_counter()
        conn.request("GET", p)
        conn.getresponse().read()
        out["server"].append(time.perf_counter() - t0)
        level, rest = p.split("_files/")[1].split("/")
        col, row = (int(v) for v in rest.split(".")[0].split("_"))
        for name, dz in gens.items():
            t0 = time.perf_counter()
            dz.get_tile(int(level), (col, row))
            out[name].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=os.path.join(HERE, "data", "slide.svs"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--cold", type=int, default=200, help="cold tiles to time")
    a = ap.parse_args()
    root, name = os.path.dirname(os.path.abspath(a.slide)), os.path.basename(a.slide)
    paths = tile_paths("/" + name, a.slide, 5000)
    rows = []
    with servers.tilescope_server(root, "--quality", "75") as ts, openslide_server(root) as osl:
        for label, base, prefix in (("tilescope serve", ts, "/dz"), ("openslide example (Flask)", osl, "")):
            servers.load(base, [prefix + p for p in paths[:50]], 4, 2)  # warm: slide opened, code loaded
            r = servers.load(base, [prefix + p for p in paths], a.clients, a.seconds)
            rows.append((label, r))
            print(label, r, flush=True)
    with servers.tilescope_server(root, "--cache", "0", "--quality", "75") as ts:
        c = cold(ts, ["/dz" + p for p in tile_paths("/" + name, a.slide, a.cold, seed=1)], a.slide)
    print(f"{a.clients} clients x {a.seconds:g} s, random 254 px JPEG tiles of the 3 finest levels, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| server | tiles/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['per_s']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} |")
    print(f"\ncold tile, median ms: tilescope server (cache off, HTTP + JPEG) {c['server']:.2f}, "
          f"openslide DeepZoomGenerator.get_tile {c['openslide get_tile']:.2f}, "
          f"tilescope.openslide get_tile {c['tilescope get_tile']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
