#!/usr/bin/env python3
"""tilescope against the other slide readers and the machine's limit, on one synthetic slide.

    python benchmarks/bench.py                      # everything, 3 processes per cell: ~20 min
    python benchmarks/bench.py --readers tilescope,openslide --workloads a,f --quick --repeats 1
    python benchmarks/bench.py --baseline /tmp/base  # + tilescope_base: another checkout's src/

Workloads (level 0 unless noted; regions drawn with fixed seeds, the same as the reference harness
in shared/bench so numbers compare):
  a  500 random 256x256 regions          d  thumbnail, longest side 1024
  b  100 random 1024x1024 regions        e  level 0 iterated in 512x512 tiles (a tile iterator where
  c  4096x4096 regions (3, mean per call)   the reader has one)
                                         f  open + metadata (size, levels, mpp) + close, x200
                                         g  the same once, the first thing a fresh process does
Every (reader, workload) runs in a fresh process after the file was read once (page cache warm)
and a garbage collection (the imports' debt is settled outside the timing, as the imports are),
--repeats times (default 3), interleaved: every reader once, then every reader again (starting one
further along each round), so a burst of another process's load hits all readers alike. Each cell
reports its median and its minimum, and the run records the load average before and after each
workload. The machine is shared and noisy: a ratio is refused (shown as "busy") when the minimal
reader's 2-thread run is not at least 1.3x faster than its 1-thread run on (b) or (c), which says
the second core was not free.
The minimal reader (pread of exactly the tiles needed + imagecodecs decode into a reused page+16
buffer + one copy; for d, decode at 1/2, 1/4 or 1/8 in the DCT domain with simplejpeg, then the same
box resize) runs as cells like the others, on 1 and on 2 threads (minimal_1t, minimal_2t); it has
no (f).
All readers hand back RGB uint8 numpy arrays; converting their native type is inside the timing.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import datetime
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKLOADS = {"a": "500 x 256² regions", "b": "100 x 1024² regions", "c": "4096² region",
             "d": "thumbnail 1024", "e": "level 0 in 512² tiles", "f": "open + metadata + close",
             "g": "first open + metadata + close"}
SECOND_CORE = 1.3  # the minimal reader's 1T/2T on (b), (c) below this: the second core was busy
THUMB = 1024


# -- workloads --------------------------------------------------------------------------------------
def regions(wl: str, W: int, H: int, quick: bool = False) -> list[tuple[int, int, int, int]]:
    if wl == "c":
        s = 4096 if min(W, H) >= 6144 else min(W, H) // 2
        return [(W // 2 - s // 2, H // 2 - s // 2, s, s),
                (max(0, W // 4 - s // 2), max(0, H // 3 - s // 2), s, s),
                (min(3 * W // 4 - s // 2, W - s), max(0, min(2 * H // 3 - s // 2, H - s)), s, s)]
    if wl == "e":
        return [(x, y, min(512, W - x), min(512, H - y)) for y in range(0, H, 512) for x in range(0, W, 512)]
    n, s, seed = {"a": (500, 256, 0), "b": (100, 1024, 1)}[wl]
    if quick:
        n //= 5
    rng = np.random.default_rng(seed)
    xs, ys = rng.integers(0, W - s + 1, n), rng.integers(0, H - s + 1, n)
    return [(int(x), int(y), s, s) for x, y in zip(xs, ys, strict=True)]


def slide_dims(path: str) -> tuple[int, int]:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        h, w = tf.pages.first.shape[:2]
    return w, h


def _area(img: np.ndarray, n: int) -> np.ndarray:
    from PIL import Image

    h, w = img.shape[:2]
    s = n / max(w, h)
    return np.asarray(Image.fromarray(img).resize((round(w * s), round(h * s)), Image.Resampling.BOX))


# -- readers ----------------------------------------------------------------------------------------
class Reader:
    """open(path); meta() -> (size, levels, mpp); region(x, y, w, h) -> RGB; thumbnail(n) -> RGB;
    tiles(ts) -> iterator of RGB (optional); close(). Constructing one imports its library, outside
    the timing."""

    tiles = None
    module = ""

    def __init__(self):
        if self.module:
            __import__(self.module)


class Tilescope(Reader):
    module = "tilescope"

    def open(self, path):
        import tilescope

        self.s = tilescope.open(path)
        self.sc = self.s.scenes[0]

    def meta(self):
        return self.sc.size, len(self.sc.levels), self.sc.mpp[0]

    def region(self, x, y, w, h):
        return self.sc.read((x, y, w, h))

    def thumbnail(self, n):
        w, h = self.sc.size
        return self.sc.read(size=(n, 0) if w >= h else (0, n))

    def tiles(self, ts):
        return (t.array for t in self.sc.tiles(ts))

    def close(self):
        self.s.close()


class OpenSlide(Reader):
    module = "openslide"

    def open(self, path):
        import openslide

        self.m = openslide
        self.s = openslide.OpenSlide(path)

    def meta(self):
        return self.s.dimensions, self.s.level_count, float(self.s.properties["openslide.mpp-x"])

    def region(self, x, y, w, h):
        return np.asarray(self.s.read_region((x, y), 0, (w, h)).convert("RGB"))

    def thumbnail(self, n):
        return np.asarray(self.s.get_thumbnail((n, n)))

    def close(self):
        self.s.close()


class TiffSlide(OpenSlide):
    module = "tiffslide"

    def open(self, path):
        import tiffslide

        self.s = tiffslide.TiffSlide(path)

    def meta(self):
        return self.s.dimensions, self.s.level_count, float(self.s.properties["tiffslide.mpp-x"])

    def region(self, x, y, w, h):
        return self.s.read_region((x, y), 0, (w, h), as_array=True)[..., :3]

    def thumbnail(self, n):
        return np.asarray(self.s.get_thumbnail((n, n), use_embedded=False))


class Slideio(Reader):
    module = "slideio"

    def open(self, path):
        import slideio

        self.s = slideio.open_slide(path, "SVS")
        self.sc = self.s.get_scene(0)

    def meta(self):
        r = self.sc.rect
        return (r[2], r[3]), self.sc.num_zoom_levels, self.sc.resolution[0] * 1e6

    def region(self, x, y, w, h):
        return self.sc.read_block((x, y, w, h))

    def thumbnail(self, n):
        r = self.sc.rect
        return self.sc.read_block(size=(n, 0) if r[2] >= r[3] else (0, n))

    def close(self):
        del self.sc, self.s


class LargeImage(Reader):
    module = "large_image"

    source = None

    def open(self, path):
        import large_image

        self.fmt = large_image.constants.TILE_FORMAT_NUMPY
        if self.source == "tiff":
            import large_image_source_tiff

            self.s = large_image_source_tiff.open(path, noCache=True)
        else:
            self.s = large_image.open(path, noCache=True)

    def meta(self):
        md = self.s.getMetadata()
        return (md["sizeX"], md["sizeY"]), md["levels"], md["mm_x"] * 1000

    @staticmethod
    def _rgb(a):
        return np.ascontiguousarray(a[..., :3]) if a.ndim == 3 and a.shape[2] == 4 else a

    def region(self, x, y, w, h):
        a, _ = self.s.getRegion(region=dict(left=x, top=y, width=w, height=h, units="base_pixels"),
                                format=self.fmt)
        return self._rgb(a)

    def thumbnail(self, n):
        return self._rgb(self.s.getThumbnail(width=n, height=n, format=self.fmt)[0])

    def tiles(self, ts):
        return (self._rgb(t["tile"]) for t in self.s.tileIterator(tile_size=dict(width=ts, height=ts),
                                                                   format=self.fmt))

    def close(self):
        del self.s


class LargeImageTiff(LargeImage):
    module = "large_image_source_tiff"
    source = "tiff"


class Pyvips(Reader):
    module = "pyvips"

    def open(self, path):
        import pyvips

        self.m, self.path = pyvips, path
        self.img = pyvips.Image.new_from_file(path, access="random")
        self.reg = pyvips.Region.new(self.img)
        self.levels = [(p, im.width, im.height) for p in range(self.img.get("n-pages"))
                       if (im := pyvips.Image.new_from_file(path, page=p)).get_typeof("tile-width")]

    def meta(self):
        import re

        mpp = float(re.search(r"MPP\s*=\s*([0-9.]+)", self.img.get("image-description")).group(1))
        return (self.img.width, self.img.height), len(self.levels), mpp

    def region(self, x, y, w, h):
        return np.frombuffer(self.reg.fetch(x, y, w, h), np.uint8).reshape(h, w, 3)

    def thumbnail(self, n):
        page = min((lv for lv in self.levels if max(lv[1:]) >= n), key=lambda lv: lv[1])[0]
        return self.m.Image.thumbnail(f"{self.path}[page={page}]", n).numpy()

    def close(self):
        del self.reg, self.img


class Cucim(Reader):
    module = "cucim"

    workers: int | None = None  # the library's default

    @property
    def kw(self) -> dict:
        return {} if self.workers is None else {"num_workers": self.workers}

    def open(self, path):
        from cucim import CuImage

        self.s = CuImage(path)

    def meta(self):
        r = self.s.resolutions
        return tuple(r["level_dimensions"][0]), r["level_count"], float(self.s.spacing()[0])

    def region(self, x, y, w, h):
        return np.asarray(self.s.read_region((x, y), (w, h), 0, **self.kw))

    def thumbnail(self, n):
        dims = self.s.resolutions["level_dimensions"]
        lv = max(i for i, d in enumerate(dims) if max(d) >= n)
        return _area(np.asarray(self.s.read_region((0, 0), tuple(dims[lv]), lv, **self.kw)), n)

    def close(self):
        self.s.close()


class CucimMT(Cucim):
    workers = os.cpu_count() or 2


class Fastslide(Reader):
    module = "fastslide"

    def open(self, path):
        import fastslide

        self.s = fastslide.FastSlide.from_file_path(path)

    def meta(self):
        return tuple(self.s.dimensions), self.s.level_count, float(self.s.mpp[0])

    @staticmethod
    def _rgb(img):
        a = img.numpy()
        return a[..., :3] if a.ndim == 3 and a.shape[2] == 4 else a

    def region(self, x, y, w, h):
        return self._rgb(self.s.read_region((x, y), 0, (w, h)))

    def thumbnail(self, n):
        dims = self.s.level_dimensions
        lv = max(i for i, d in enumerate(dims) if max(d) >= n)
        return _area(self._rgb(self.s.read_region((0, 0), lv, tuple(dims[lv]))), n)

    def close(self):
        self.s.close()


READERS = {"tilescope": Tilescope, "tilescope_base": Tilescope, "openslide": OpenSlide,
           "tiffslide": TiffSlide, "slideio": Slideio, "large_image": LargeImage,
           "large_image_tiff": LargeImageTiff, "pyvips": Pyvips,
           "cucim": Cucim, "cucim_mt": CucimMT, "fastslide": Fastslide}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_cell(name: str, wl: str, path: str, quick: bool) -> dict:
    """One (reader, workload) measurement; meant to run in a fresh process."""
    rd = READERS[name]()
    W, H = slide_dims(path)
    # the imports' garbage-collector debt (a first full collection, ~0.5 ms here, due after heavy
    # imports) is settled before the timing, as the imports are: else it lands in whichever
    # reader's timed code allocates Python objects first
    gc.collect()
    mpix = calls = 0
    if wl in "fg":
        n = 1 if wl == "g" else 40 if quick else 200
        c0, t0 = _cpu(), time.perf_counter()
        for _ in range(n):
            rd.open(path)
            rd.meta()
            rd.close()
        wall, cpu, calls = time.perf_counter() - t0, _cpu() - c0, n
    else:
        rd.open(path)
        c0, t0 = _cpu(), time.perf_counter()
        if wl == "d":
            a = rd.thumbnail(THUMB)
            assert a.ndim == 3 and a.shape[2] == 3 and max(a.shape[:2]) == THUMB, a.shape
            mpix, calls = a.shape[0] * a.shape[1] / 1e6, 1
        else:
            regs = regions(wl, W, H, quick)
            arrays = rd.tiles(512) if wl == "e" and rd.tiles is not None else \
                (rd.region(*r) for r in regs)
            for a, (_, _, w, h) in zip(arrays, regs, strict=True):
                assert a.shape == (h, w, 3) and a.dtype == np.uint8, (a.shape, a.dtype)
                mpix += w * h / 1e6
                calls += 1
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        rd.close()
    return dict(reader=name, workload=wl, calls=calls, wall_s=wall, cpu_s=cpu,
                ms_per_call=1000 * wall / calls, mp_per_s=mpix / wall if mpix else None,
                rss_mb=_peak_rss_mb())


def _peak_rss_mb() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries that over exec from the parent."""
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024


# -- the minimal reader -------------------------------------------------------------------------
class Minimal:
    """pread exactly the needed tiles + imagecodecs decode into a reused buffer + one copy."""

    def __init__(self, path: str):
        import tifffile

        self.fd = os.open(path, os.O_RDONLY)
        with tifffile.TiffFile(path) as tf:
            self.levels = [dict(w=p.imagewidth, h=p.imagelength, tw=p.tilewidth, th=p.tilelength,
                                offsets=list(p.dataoffsets), counts=list(p.databytecounts),
                                tables=p.jpegtables) for p in tf.pages if p.is_tiled]
        self.bufs: dict = {}

    def _tile(self, lv, out, rect, tx, ty, k):
        import threading

        import imagecodecs
        import simplejpeg

        x, y, w, h = rect
        tw, th = lv["tw"] // k, lv["th"] // k
        i = ty * -(-lv["w"] // lv["tw"]) + tx
        key = (threading.get_ident(), th, tw)
        buf = self.bufs.get(key)
        if buf is None:  # libjpeg-turbo writes page+16 buffers fastest (as in shared/bench/ceiling.py)
            n = th * tw * 3
            raw = np.empty(n + 4096 + 16, np.uint8)
            off = (16 - raw.ctypes.data) % 4096
            buf = self.bufs[key] = raw[off:off + n].reshape(th, tw, 3)
        data = os.pread(self.fd, lv["counts"][i], lv["offsets"][i])
        if k == 1:
            imagecodecs.jpeg8_decode(data, tables=lv["tables"], outcolorspace="RGB", out=buf)
        else:  # 1/k in the DCT domain
            simplejpeg.decode_jpeg(lv["tables"][:-2] + data[2:], "RGB", min_height=th, min_width=tw,
                                   buffer=buf)
        x0, y0 = tx * tw, ty * th
        ix0, iy0, ix1, iy1 = max(x, x0), max(y, y0), min(x + w, x0 + tw), min(y + h, y0 + th)
        out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = buf[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]

    def region(self, rect, level=0, pool=None, k=1):
        """``rect`` in the pixels of ``level`` decoded at 1/k."""
        lv = self.levels[level]
        x, y, w, h = rect
        tw, th = lv["tw"] // k, lv["th"] // k
        out = np.empty((h, w, 3), np.uint8)
        tiles = [(tx, ty) for ty in range(y // th, (y + h - 1) // th + 1)
                 for tx in range(x // tw, (x + w - 1) // tw + 1)]

        def run(part):
            for tx, ty in part:
                self._tile(lv, out, rect, tx, ty, k)
        if pool is None or len(tiles) < 2:
            run(tiles)
        else:
            half = (len(tiles) + 1) // 2
            fut = pool.submit(run, tiles[half:])
            run(tiles[:half])
            fut.result()
        return out

    def thumbnail(self, n, pool=None):
        """The smallest level with a side >= n, decoded at the largest DCT scale keeping that
        side >= n, area-resized to n."""
        li = max(i for i, lv in enumerate(self.levels) if max(lv["w"], lv["h"]) >= n)
        lv = self.levels[li]
        k = max(k for k in (1, 2, 4, 8) if max(lv["w"], lv["h"]) // k >= n)
        return _area(self.region((0, 0, -(-lv["w"] // k), -(-lv["h"] // k)), li, pool, k), n)


class MinimalReader(Reader):
    """The minimal reader as a cell like any other (fresh process, same timing), on 1 or 2 threads."""

    threads = 1

    def open(self, path):
        self.m = Minimal(path)
        self.pool = cf.ThreadPoolExecutor(1) if self.threads == 2 else None  # + the caller = 2

    def meta(self):  # the floor for (f): the bytes a parser would look at first
        return os.pread(self.m.fd, 65536, 0)

    def region(self, x, y, w, h):
        return self.m.region((x, y, w, h), 0, self.pool)

    def thumbnail(self, n):
        return self.m.thumbnail(n, self.pool)

    def close(self):
        os.close(self.m.fd)
        if self.pool:
            self.pool.shutdown()


class Minimal2T(MinimalReader):
    threads = 2


MINIMAL = {"minimal_1t": MinimalReader, "minimal_2t": Minimal2T}
READERS.update(MINIMAL)


# -- driver -------------------------------------------------------------------------------------
def _warm(path: str) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    for p in ("tilescope", "numpy", "tifffile", "imagecodecs", "pillow", "openslide-python", "openslide-bin",
              "tiffslide", "slideio", "large-image", "pyvips", "pyvips-binary", "cucim-cu12", "fastslide"):
        with contextlib.suppress(PackageNotFoundError):
            out[p] = version(p)
    return out


def _second_core(results: list[dict]) -> float | None:
    """The minimal reader's best 1-thread over best 2-thread time on (b) and (c), the worse of the
    two: below SECOND_CORE the second core was not free for this run."""
    got = []
    for wl in "bc":
        one = [r for r in results if r["reader"] == "minimal_1t" and r["workload"] == wl and "error" not in r]
        two = [r for r in results if r["reader"] == "minimal_2t" and r["workload"] == wl and "error" not in r]
        if one and two:
            got.append(one[0]["min_ms"] / two[0]["min_ms"])
    return min(got) if got else None


def table(results: list[dict]) -> str:
    readers = list(dict.fromkeys(r["reader"] for r in results))
    base = "tilescope_base" in readers
    core = _second_core(results)
    busy = core is not None and core < SECOND_CORE
    heads = ["tilescope / best peer", "tilescope / minimal 2T", "cpu / minimal 1T cpu"] + \
        (["tilescope_base / tilescope"] if base else [])
    lines = ["| workload | " + " | ".join(readers) + " | " + " | ".join(heads) + " |",
             "|---" * (len(readers) + len(heads) + 1) + "|"]
    for wl in WORKLOADS:
        cells = {r["reader"]: r for r in results if r["workload"] == wl}
        if not cells:
            continue

        def cell(r):
            if "error" in r:
                return "error"
            speed = f"{r['mp_per_s']:.1f} MP/s, " if r.get("mp_per_s") else ""
            return (f"{speed}{r['ms_per_call']:.3g} ms (min {r['min_ms']:.3g}), {r['rss_mb']:.0f} MB, "
                    f"cpu/wall {r['cpu_s'] / r['wall_s']:.2f}")
        row = [cell(cells[n]) if n in cells else "" for n in readers]
        ok = {n: r for n, r in cells.items() if "error" not in r}
        ours = ok.get("tilescope")
        peers = [r for n, r in ok.items() if not n.startswith("tilescope") and n not in MINIMAL]
        ratios = [""] * len(heads)
        if ours and not busy:
            if peers:
                best = min(peers, key=lambda r: r["ms_per_call"])
                ratios[0] = f"{best['ms_per_call'] / ours['ms_per_call']:.2f}x ({best['reader']})"
            if "minimal_2t" in ok:
                ratios[1] = f"{ok['minimal_2t']['ms_per_call'] / ours['ms_per_call']:.2f}"
            if "minimal_1t" in ok:
                m1 = ok["minimal_1t"]
                ratios[2] = f"{ours['cpu_s'] / ours['calls'] / (m1['cpu_s'] / m1['calls']):.2f}"
            if "tilescope_base" in ok:
                ratios[3] = f"{ok['tilescope_base']['ms_per_call'] / ours['ms_per_call']:.2f}"
        elif ours:
            ratios = ["busy"] * len(heads)
        lines.append(f"| ({wl}) {WORKLOADS[wl]} | " + " | ".join(row) + " | " + " | ".join(ratios) + " |")
    note = "second core: unchecked (no minimal reader on b or c)" if core is None else \
        f"second core: minimal 1T/2T = {core:.2f} on (b)/(c)" + \
        (f", below {SECOND_CORE}: busy, ratios refused" if busy else "")
    return "\n".join(lines) + f"\n\n{note}\n"


def _cell(name: str, wl: str, a: argparse.Namespace) -> dict:
    """One fresh process measuring (``name``, ``wl``); tilescope_base imports --baseline's src/."""
    _warm(a.slide)
    env = dict(os.environ)
    if name == "tilescope_base":
        env["PYTHONPATH"] = os.pathsep.join([os.path.join(a.baseline, "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, os.path.abspath(__file__), "--cell", name, wl, "--slide", a.slide]
    p = subprocess.run(cmd + (["--quick"] if a.quick else []), capture_output=True, text=True, timeout=600,
                       env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode or not line:
        return dict(reader=name, workload=wl, error=(p.stderr.strip().splitlines() or ["?"])[-1][:200])
    return json.loads(line[-1][7:])


def _summary(runs: list[dict]) -> dict:
    """The median process of a cell's runs, with the minimum ms/call beside it."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    r = dict(sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2])
    r["min_ms"] = min(x["ms_per_call"] for x in runs)
    r["runs_ms"] = [x["ms_per_call"] for x in runs]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=os.path.join(HERE, "data", "slide.svs"))
    ap.add_argument("--readers", "--peers", default=",".join(r for r in READERS if r != "tilescope_base"))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--quick", action="store_true", help="fewer regions (a, b) and opens (f)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of processes: median and min per cell")
    ap.add_argument("--baseline", help="a checkout of another tilescope commit: adds tilescope_base")
    ap.add_argument("--out", default=None, help="folder for results.json and results.md")
    ap.add_argument("--cell", nargs=2, metavar=("READER", "WORKLOAD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        import warnings

        warnings.simplefilter("ignore")
        print("RESULT " + json.dumps(run_cell(a.cell[0], a.cell[1], a.slide, a.quick)))
        return 0
    if not os.path.exists(a.slide):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tools import synth  # the repository's fixture writers

        os.makedirs(os.path.dirname(a.slide), exist_ok=True)
        print(f"writing {a.slide} (40000x30000, once)", flush=True)
        synth.write_svs(a.slide, 40000, 30000, downsamples=(1, 4, 16, 64))
    out = a.out or os.path.join(HERE, "results", datetime.date.today().isoformat())
    os.makedirs(out, exist_ok=True)
    readers = a.readers.split(",")
    if a.baseline and "tilescope_base" not in readers:
        readers.insert(readers.index("tilescope") + 1 if "tilescope" in readers else 0, "tilescope_base")
    results, loads = [], {}
    for wl in a.workloads.split(","):
        names = [n for n in readers if not (wl in "fg" and n in MINIMAL)]
        runs: dict[str, list[dict]] = {n: [] for n in names}
        before = os.getloadavg()
        for k in range(a.repeats):  # every reader once per round, each round starting one further on
            for name in names[k % len(names):] + names[:k % len(names)]:
                if not any("error" in r for r in runs[name]):
                    runs[name].append(_cell(name, wl, a))
        loads[wl] = (before, os.getloadavg())
        print(f"{wl}: load average {before[0]:.2f} before, {loads[wl][1][0]:.2f} after", flush=True)
        for name in names:
            r = _summary(runs[name])
            results.append(r)
            summary = f"ERROR {r['error']}" if "error" in r else (
                f"{r['mp_per_s'] or 0:8.1f} MP/s {r['ms_per_call']:9.3f} ms/call (min {r['min_ms']:.3f}) "
                f"cpu/wall {r['cpu_s'] / r['wall_s']:.2f} rss {r['rss_mb']:.0f} MB")
            print(f"{wl} {name:17s} {summary}", flush=True)
    load_md = ", ".join(f"({wl}) {b[0]:.2f} -> {e[0]:.2f}" for wl, (b, e) in loads.items())
    md = (f"Slide: {a.slide} ({os.path.getsize(a.slide) / 2**20:.0f} MiB); {a.repeats} interleaved rounds; "
          f"ms: median process (min); load average (1 min) per workload, before -> after: {load_md}\n\n"
          f"{table(results)}")
    versions = _versions()
    if a.baseline:
        versions["tilescope_base"] = subprocess.run(["git", "-C", a.baseline, "rev-parse", "--short", "HEAD"],
                                                    capture_output=True, text=True).stdout.strip()
    save(out, dict(versions=versions, loads=loads, results=results), md)
    return 0


def save(out: str, data: dict, md: str) -> None:
    """Write a run's results.json and results.md into ``out``, and print the table."""
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    sys.exit(main())
