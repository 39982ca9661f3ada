#!/usr/bin/env python3
"""A >= 2 GB ScanImage BigTIFF stack: tilescope vs tifffile vs ScanImageTiffReader vs plain pread,
the workloads of shared/bench/scanimage/.

    python benchmarks/scanimage_bench.py     # writes benchmarks/data/si_stack.tif once (2.1 GB)

The stack: 4096 int16 512x512 frames in ScanImage's layout (tools.synth.write_scanimage: static
block, per-frame IFD + descriptions + one strip). Workloads: the whole stack into memory, a
100-frame interval (frames 1000-1099), and all 4096 per-frame descriptions (from a fresh open).
Each (reader, workload) in a fresh process, page cache warm, best of 3 (descriptions: 1 run).
ScanImageTiffReader's descriptions are not run: description(i) re-walks the file per frame (the
reference run: 184 s for 4096).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
N, H, W = 4096, 512, 512
A, B = 1000, 1100


def _warm(path):
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 24):
            pass


def cell(reader: str, workload: str, path: str) -> dict:
    if reader == "pread":
        size = os.path.getsize(path)

        def whole():
            buf = np.empty(size, np.uint8)
            mv, fd, off = memoryview(buf), os.open(path, os.O_RDONLY), 0
            while off < size:
                off += os.preadv(fd, [mv[off:off + (1 << 26)]], off)
            os.close(fd)
            return buf
        fns = {"whole": whole}
    elif reader == "tilescope":
        import tilescope

        def descriptions():
            with tilescope.open(path) as s:
                return list(s.scenes[0].frame_descriptions)
        sc = tilescope.open(path).scenes[0]
        fns = {"whole": sc.raw_frames, "interval": lambda: sc.raw_frames(A, B), "descriptions": descriptions}
    elif reader == "tifffile":
        import tifffile

        def descriptions():
            with tifffile.TiffFile(path) as tf:
                return [p.description for p in tf.pages]
        fns = {"whole": lambda: tifffile.imread(path),
               "interval": lambda: tifffile.imread(path, key=range(A, B)), "descriptions": descriptions}
    else:
        from ScanImageTiffReader import ScanImageTiffReader

        def whole():
            with ScanImageTiffReader(path) as r:
                return r.data()

        def interval():
            with ScanImageTiffReader(path) as r:
                return r.data(beg=A, end=B)
        fns = {"whole": whole, "interval": interval}
    if workload not in fns:
        return dict(reader=reader, workload=workload, skipped=True)
    best, out = float("inf"), None
    for _ in range(1 if workload == "descriptions" else 3):
        if workload == "whole":
            _warm(path)
        t0 = time.perf_counter()
        out = fns[workload]()
        best = min(best, time.perf_counter() - t0)
    nbytes = out.nbytes if hasattr(out, "nbytes") else 0
    return dict(reader=reader, workload=workload, ms=best * 1000,
                gb_per_s=nbytes / best / 1e9 if nbytes else None)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        print("RESULT " + json.dumps(cell(*sys.argv[2:5])))
        return 0
    path = os.path.join(HERE, "data", "si_stack.tif")
    if not os.path.exists(path):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from tools import synth  # the repository's fixture writers

        os.makedirs(os.path.dirname(path), exist_ok=True)
        rng = np.random.default_rng(0)
        base = rng.integers(0, 4000, (H, W), dtype=np.int16)
        print(f"writing {path}", flush=True)
        synth.write_scanimage(path, W, H, channels=1, slices=1, volumes=N,
                              frames=(base + np.int16(i % 7) for i in range(N)))
    print(f"{path}: {os.path.getsize(path) / 1e9:.2f} GB", flush=True)
    _warm(path)
    rows = []
    for wl in ("whole", "interval", "descriptions"):
        for rd in ("pread", "tilescope", "tifffile", "scanimage-tiff-reader"):
            p = subprocess.run([sys.executable, __file__, "--cell", rd, wl, path], capture_output=True,
                               text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            r = json.loads(line[-1][7:]) if line else dict(reader=rd, workload=wl, error=p.stderr[-300:])
            if not r.get("skipped"):
                rows.append(r)
                print(r, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
