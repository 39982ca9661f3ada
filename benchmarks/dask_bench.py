#!/usr/bin/env python3
"""Level-0 reductions through Dask and dask.distributed against tilescope's own tile iteration and
tiffslide's zarr store (the peer that offers the same thing), and map_tiles' scaling over 8 slides.

    python benchmarks/dask_bench.py                 # ~4 min on 2 cores
    python benchmarks/dask_bench.py --repeats 1 --methods iter,dask_threads

Methods (each the mean colour of level 0 (``--reduce``: numpy's mean per tile or chunk, or
per-channel sums that cost less than the read) of the 40000x30000 bench slide, in a fresh process,
after one read of the file so the page cache is warm; cluster start-up is timed apart):
  iter            Scene.tiles(1024) iterated (prefetch on every core), a mean per tile
  dask_threads    scene.to_dask(0).mean(axis=(0, 1)).compute() on the threaded scheduler (2 threads)
  dask_cluster    the same on a LocalCluster of 2 single-threaded worker processes
  map_tiles       tilescope.jobs.map_tiles(mean per tile, tile_size=1024) on that cluster
  tiffslide_dask  dask.array.from_zarr(tiffslide's zarr group "0").mean(...) on 2 threads
Scaling: map_tiles over 8 slides (10000x8000 SVS each) on 1 and on 2 worker processes. Peak RSS
of each worker process (ru_maxrss) is read back from the workers after the job.
Repeats are interleaved (every method once per round), medians and minima kept, the load average
recorded before and after; on this 2-core shared machine a busy second core shows as a low
1-vs-2-worker ratio, so read the scaling row before trusting the others.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
METHODS = ("iter", "dask_threads", "dask_cluster", "map_tiles", "tiffslide_dask")
TILE = 1024


def channel_sums(a):
    """Per-channel sums, one contiguous pass per channel: ~2 ms for a 1024² RGB tile, where numpy's
    ``a.mean(axis=(0, 1))`` (strided over interleaved channels) takes ~16 ms, more than the read."""
    import numpy as np

    return np.array([a[..., c].sum(dtype=np.uint64) for c in range(a.shape[-1])], np.float64)


def tile_stat(array, tile, reduce: str = "mean") -> dict:
    n = array.shape[0] * array.shape[1]
    m = array.mean(axis=(0, 1)) if reduce == "mean" else channel_sums(array) / n
    return {"r": float(m[0]), "g": float(m[1]), "b": float(m[2])}


def _level_mean(arr, reduce: str):
    """The dask expression: the issue's ``mean(axis=(0, 1))``, or per-chunk channel sums."""
    if reduce == "mean":
        return arr.mean(axis=(0, 1))
    import numpy as np

    sums = arr.map_blocks(lambda b: channel_sums(b)[None, None], dtype=np.float64, chunks=(1, 1, 3))
    return sums.sum(axis=(0, 1)) / (arr.shape[0] * arr.shape[1])


def _peak_rss_mb() -> float:
    # VmHWM: this process's own peak (ru_maxrss carries a parent's peak across fork + exec)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM")) / 1024


def run_cell(method: str, slides: list[str], workers: int, reduce: str) -> dict:
    import functools

    import dask
    import dask.array
    import distributed  # noqa: F401
    import numpy as np
    import pandas  # noqa: F401
    import tiffslide
    import zarr  # noqa: F401

    import tilescope
    from tilescope import jobs

    out: dict = {"method": method, "workers": workers, "reduce": reduce}
    with tilescope.open(slides[0]) as s:
        w, h = s.scenes[0].size
    out["mpx"] = w * h * len(slides) / 1e6
    client_cm = None
    if method in ("dask_cluster", "map_tiles"):
        t0 = time.perf_counter()
        client_cm = jobs.local_client(workers)
        client = client_cm.__enter__()
        out["startup_s"] = time.perf_counter() - t0
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    if method == "iter":
        with tilescope.open(slides[0]) as s:
            stats = [tile_stat(t.array, t, reduce) for t in s.scenes[0].tiles(TILE)]
        result = np.mean([[v["r"], v["g"], v["b"]] for v in stats], axis=0)
    elif method == "dask_threads":
        with tilescope.open(slides[0]) as s:
            result = _level_mean(s.scenes[0].to_dask(0), reduce).compute(scheduler="threads", num_workers=2)
    elif method == "dask_cluster":
        with tilescope.open(slides[0]) as s:
            result = client.compute(_level_mean(s.scenes[0].to_dask(0), reduce)).result()
    elif method == "map_tiles":
        df = jobs.map_tiles(functools.partial(tile_stat, reduce=reduce), slides, tile_size=TILE,
                            client=client, batch=16)
        result = df[["r", "g", "b"]].to_numpy().mean(0)
        out["tiles"] = len(df)
    elif method == "tiffslide_dask":
        import dask.array as da
        import tiffslide

        with tiffslide.TiffSlide(slides[0]) as ts, dask.config.set(scheduler="threads", num_workers=2):
            result = _level_mean(da.from_zarr(ts.zarr_group["0"]), reduce).compute()
    else:
        raise SystemExit(f"unknown method {method}")
    out["wall_s"] = time.perf_counter() - t0
    out["client_cpu_s"] = time.process_time() - cpu0
    out["mean"] = [round(float(v), 3) for v in result]
    out["rss_mb"] = _peak_rss_mb()
    if client_cm is not None:
        out["worker_rss_mb"] = sorted(client.run(_peak_rss_mb).values())
        client_cm.__exit__(None, None, None)
    return out


def _cell(method: str, slides: list[str], workers: int, reduce: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src"))
    done = subprocess.run([sys.executable, __file__, "--cell", method, str(workers), reduce, *slides],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"method": method, "error": done.stderr[-2000:]}
    return json.loads(lines[-1][7:])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slide", default=os.path.join(HERE, "data", "slide.svs"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-scaling", action="store_true")
    ap.add_argument("--reduce", choices=("mean", "sums"), default="mean",
                    help="mean: numpy's mean(axis=(0, 1)) per tile/chunk (the user's code, costlier than "
                    "the read); sums: per-channel sums (~2 ms per 1024² tile: the read dominates)")
    ap.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        import warnings

        warnings.simplefilter("ignore")
        print("RESULT " + json.dumps(run_cell(a.cell[0], a.cell[3:], int(a.cell[1]), a.cell[2])), flush=True)
        return 0
    sys.path.insert(0, ROOT)
    from tools import synth

    if not os.path.exists(a.slide):
        print(f"writing {a.slide} (40000x30000, once)", flush=True)
        os.makedirs(os.path.dirname(a.slide), exist_ok=True)
        synth.write_svs(a.slide, 40000, 30000, downsamples=(1, 4, 16, 64))
    cohort = [os.path.join(HERE, "data", f"cohort{i}.svs") for i in range(8)]
    if not a.no_scaling and not all(os.path.exists(p) for p in cohort):
        synth.write_svs(cohort[0], 10000, 8000, downsamples=(1, 4, 16))
        for p in cohort[1:]:
            with open(cohort[0], "rb") as src, open(p, "wb") as dst:
                dst.write(src.read())
    for p in [a.slide, *cohort]:  # page cache warm
        if os.path.exists(p):
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
    cells: list[tuple[str, list[str], int]] = [(m, [a.slide], 2) for m in a.methods.split(",")]
    if not a.no_scaling:
        cells += [("map_tiles", cohort, 1), ("map_tiles", cohort, 2)]
    runs: dict[tuple, list[dict]] = {(m, len(s), w): [] for m, s, w in cells}
    load = [os.getloadavg()[0]]
    for k in range(a.repeats):
        for m, s, w in cells[k % len(cells):] + cells[:k % len(cells)]:
            r = _cell(m, s, w, a.reduce)
            runs[(m, len(s), w)].append(r)
            print(json.dumps(r)[:300], flush=True)
        load.append(os.getloadavg()[0])
    print(f"\nload average (1 min) before and after each round: {', '.join(f'{v:.2f}' for v in load)}")
    summary = {}
    for key, rs in runs.items():
        errors = [r["error"] for r in rs if "error" in r]
        if errors:
            print(f"{key}: ERROR {errors[0][-500:]}")
            continue
        walls = [r["wall_s"] for r in rs]
        summary[key] = {"median_s": statistics.median(walls), "min_s": min(walls), "mpx": rs[0]["mpx"],
                        "rss": max(r["rss_mb"] for r in rs),
                        "worker_rss": max((max(r.get("worker_rss_mb", [0])) for r in rs), default=0),
                        "startup": statistics.median([r.get("startup_s", 0) for r in rs])}
    it = summary.get(("iter", 1, 2))
    print("\n| method | slides | workers | median s | min s | MP/s (median) | / iter | peak RSS MB "
          "(client; worker) | cluster start s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (m, n, w), v in summary.items():
        rate = v["mpx"] / v["median_s"]
        rel = f"{rate / (it['mpx'] / it['median_s']):.2f}" if it and n == 1 else ""
        print(f"| {m} | {n} | {w} | {v['median_s']:.2f} | {v['min_s']:.2f} | {rate:.0f} | {rel} | "
              f"{v['rss']:.0f}; {v['worker_rss']:.0f} | {v['startup']:.1f} |")
    one, two = summary.get(("map_tiles", 8, 1)), summary.get(("map_tiles", 8, 2))
    if one and two:
        print(f"\nscaling, 8 slides, map_tiles 1 -> 2 workers: {one['median_s'] / two['median_s']:.2f}x "
              f"(minima {one['min_s'] / two['min_s']:.2f}x)")
    ts, dt = summary.get(("tiffslide_dask", 1, 2)), summary.get(("dask_threads", 1, 2))
    if ts and dt:
        print(f"to_dask (threads) / tiffslide + dask: {ts['median_s'] / dt['median_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
