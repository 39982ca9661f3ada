#!/usr/bin/env python3
"""tilescope on a slide served from 127.0.0.1 — by nginx over HTTP and by moto's S3 server —
with and without 20 ms added to every request, against the same reads of the local file and
against tiffslide + fsspec (its HTTP filesystem, s3fs) on the same servers.

    python benchmarks/remote_bench.py                     # ~15 min on 2 cores
    python benchmarks/remote_bench.py --readers tilescope --where http,http+20ms --workloads b,o

Workloads a-d of bench.py on its 40000x30000 SVS (the same regions; a and b shortened to 100 and 20
regions), plus o: open + metadata + close as the first thing a fresh process does. The added
latency is a TCP proxy of our own (tools.servers.delay_proxy) that holds every request 20 ms
before passing it on: what a round trip to a bucket costs, without tc netem. Every cell is a fresh
process; rounds are interleaved over (reader, where); a cell reports its median and minimum and,
for tilescope, the requests it made (RemoteSource.requests; the open's included for o).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import bench  # noqa: E402  (the workloads' regions, the slide)

WORKLOADS = {"a": "100 x 256² regions", "b": "20 x 1024² regions", "c": "4096² region", "d": "thumbnail 1024",
             "o": "first open + metadata"}
WHERE = ["local", "http", "http+20ms", "s3", "s3+20ms"]
READERS = ["tilescope", "tiffslide"]
SHORT = {"a": 100, "b": 20}


def _regions(wl: str, W: int, H: int) -> list[tuple[int, int, int, int]]:
    return bench.regions(wl, W, H)[:SHORT.get(wl)]


class Tilescope(bench.Tilescope):
    def open(self, url: str, so: dict | None) -> None:  # type: ignore[override]
        import tilescope

        self.s = tilescope.open(url, **({"storage_options": so} if so else {}))
        self.sc = self.s.scenes[0]

    def requests(self) -> int | None:
        return getattr(self.s.source, "requests", None)


class TiffSlide(bench.TiffSlide):
    def open(self, url: str, so: dict | None) -> None:  # type: ignore[override]
        import tiffslide

        self.s = tiffslide.TiffSlide(url, storage_options=so) if so else tiffslide.TiffSlide(url)

    def requests(self) -> None:
        return None


def run_cell(reader: str, wl: str, url: str, so: dict | None, dims: tuple[int, int]) -> dict:
    rd = {"tilescope": Tilescope, "tiffslide": TiffSlide}[reader]()  # imports its library
    if wl == "o":
        t0 = time.perf_counter()
        rd.open(url, so)
        rd.meta()
        wall = time.perf_counter() - t0
        req = rd.requests()
        rd.close()
        return dict(calls=1, wall_s=wall, ms_per_call=1000 * wall, requests=req)
    rd.open(url, so)
    before = rd.requests()
    t0 = time.perf_counter()
    if wl == "d":
        a = rd.thumbnail(bench.THUMB)
        assert max(a.shape[:2]) == bench.THUMB, a.shape
        calls = 1
    else:
        regs = _regions(wl, *dims)
        for (x, y, w, h) in regs:
            a = rd.region(x, y, w, h)
            assert a.shape == (h, w, 3), a.shape
        calls = len(regs)
    wall = time.perf_counter() - t0
    req = rd.requests()
    rd.close()
    return dict(calls=calls, wall_s=wall, ms_per_call=1000 * wall / calls,
                requests=None if req is None else (req - before) / calls)


def _cell(reader: str, wl: str, where: str, urls: dict, so: dict, slide: str) -> dict:
    url = urls[where]
    cmd = [sys.executable, os.path.abspath(__file__), "--cell", reader, wl, url, "--slide", slide]
    if where.startswith("s3"):
        cmd += ["--storage-options", json.dumps(so[where])]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    base = dict(reader=reader, workload=wl, where=where)
    if p.returncode or not line:
        return base | dict(error=(p.stderr.strip().splitlines() or ["?"])[-1][:200])
    return base | json.loads(line[-1][7:])


def _summary(runs: list[dict]) -> dict:
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    r = dict(sorted(runs, key=lambda x: x["wall_s"])[len(runs) // 2])
    r["min_ms"] = min(x["ms_per_call"] for x in runs)
    return r


def table(results: list[dict], wheres: list[str], readers: list[str]) -> str:
    cell = {(r["reader"], r["workload"], r["where"]): r for r in results}
    head = "| workload | reader | " + " | ".join(wheres) + " |"
    out = [head, "|" + "---|" * (len(wheres) + 2)]
    for wl in WORKLOADS:
        for rd in readers:
            row = []
            for w in wheres:
                r = cell.get((rd, wl, w))
                if r is None:
                    row.append("")
                elif "error" in r:
                    row.append("error")
                else:
                    shown = r.get("requests") is not None and w != "local"
                    req = f", {r['requests']:.1f} req" if shown else ""
                    row.append(f"{r['ms_per_call']:.1f} ({r['min_ms']:.1f}){req}")
            if any(row):
                out.append(f"| {wl} {WORKLOADS[wl]} | {rd} | " + " | ".join(row) + " |")
    out += ["", "| workload | " + " | ".join(f"tilescope {w} / local" for w in wheres if w != "local") +
            " | " + " | ".join(f"tiffslide / tilescope {w}" for w in wheres) + " |",
            "|" + "---|" * (2 * len(wheres))]
    def ms(rd: str, wl: str, w: str) -> float | None:
        r = cell.get((rd, wl, w))
        return r["ms_per_call"] if r and "error" not in r else None

    for wl in WORKLOADS:
        ratios = []
        for w in wheres:
            if w != "local":
                a, b = ms("tilescope", wl, w), ms("tilescope", wl, "local")
                ratios.append(f"{a / b:.2f}" if a and b else "")
        for w in wheres:
            a, b = ms("tiffslide", wl, w), ms("tilescope", wl, w)
            ratios.append(f"{a / b:.2f}" if a and b else "")
        out.append(f"| {wl} | " + " | ".join(ratios) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=os.path.join(HERE, "data", "slide.svs"))
    ap.add_argument("--readers", default=",".join(READERS))
    ap.add_argument("--where", default=",".join(WHERE))
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--delay", type=float, default=0.02, help="seconds added to each request (+20ms cells)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cell", nargs=3, metavar=("READER", "WORKLOAD", "URL"), help=argparse.SUPPRESS)
    ap.add_argument("--storage-options", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.cell:
        import warnings

        warnings.simplefilter("ignore")
        so = json.loads(a.storage_options) if a.storage_options else None
        result = run_cell(a.cell[0], a.cell[1], a.cell[2], so, bench.slide_dims(a.slide))
        print("RESULT " + json.dumps(result))
        return 0
    from tools import servers

    if not os.path.exists(a.slide):
        from tools import synth

        os.makedirs(os.path.dirname(a.slide), exist_ok=True)
        synth.write_svs(a.slide, 40000, 30000, downsamples=(1, 4, 16, 64))
    readers, wheres = a.readers.split(","), a.where.split(",")
    name = os.path.basename(a.slide)
    results = []
    with servers.nginx(os.path.dirname(os.path.abspath(a.slide))) as http, servers.s3_server() as s3, \
            servers.delay_proxy(http, a.delay) as slow_http, servers.delay_proxy(s3, a.delay) as slow_s3:
        servers.s3_client(s3).create_bucket(Bucket="bench")
        servers.s3_client(s3).upload_file(a.slide, "bench", name)
        urls = {"local": a.slide, "http": f"{http}/{name}", "http+20ms": f"{slow_http}/{name}",
                "s3": f"s3://bench/{name}", "s3+20ms": f"s3://bench/{name}"}
        so = {"s3": servers.s3_options(s3), "s3+20ms": servers.s3_options(slow_s3)}
        cells = [(rd, w) for rd in readers for w in wheres]
        loads = {}
        for wl in a.workloads.split(","):
            runs: dict = {c: [] for c in cells}
            before = os.getloadavg()[0]
            for k in range(a.repeats):
                for rd, w in cells[k % len(cells):] + cells[:k % len(cells)]:
                    runs[(rd, w)].append(_cell(rd, wl, w, urls, so, a.slide))
            loads[wl] = (before, os.getloadavg()[0])
            for (rd, w), rs in runs.items():
                r = _summary(rs)
                results.append(r)
                print(wl, rd, w, r.get("error") or f"{r['ms_per_call']:.1f} ms/call (min {r['min_ms']:.1f}) "
                      f"requests {r.get('requests')}", flush=True)
    load_md = ", ".join(f"({wl}) {b:.2f} -> {e:.2f}" for wl, (b, e) in loads.items())
    md = (f"Slide: {a.slide} ({os.path.getsize(a.slide) / 2**20:.0f} MiB), {a.repeats} interleaved rounds, "
          f"+{a.delay * 1000:.0f} ms per request in the +20ms cells; ms per call: median process (min), "
          f"and tilescope's requests per call; load average per workload: {load_md}\n\n"
          f"{table(results, wheres, readers)}\n")
    out = a.out or os.path.join(HERE, "results", f"remote-{datetime.date.today().isoformat()}")
    os.makedirs(out, exist_ok=True)
    bench.save(out, dict(loads=loads, results=results), md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
