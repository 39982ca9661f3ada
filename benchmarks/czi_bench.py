#!/usr/bin/env python3
"""tilescope against pylibCZIrw (and slideio) on a CZI mosaic, the workloads of shared/bench/czi.

    python benchmarks/czi_bench.py            # writes benchmarks/data/bench.czi once (~420 MiB)

The file: 12288x12288, 2 channels uint16, 144 subblocks of 1024x1024 per channel, zstd1 with hi-lo
byte packing, no pyramid, written by pylibCZIrw. Workloads: a 4096x4096 region of channel 0, and a
1/16 overview of channel 0 (768x768). Each reader runs in a fresh process; the first call counts
(later ones may come from a reader's cache), the best of 3 is shown too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROI = (2000, 2000, 4096, 4096)


def write(path: str) -> None:
    import numpy as np
    from pylibCZIrw import czi as pyczi

    t, n = 1024, 12
    base = np.random.default_rng(0).integers(0, 3000, (t, t)).astype(np.uint16)
    with pyczi.create_czi(path, exist_ok=True,
                          compression_options="zstd1:ExplicitLevel=1;PreProcess=HiLoByteUnpack") as w:
        for c in range(2):
            for ty in range(n):
                for tx in range(n):
                    a = np.roll(base, (ty * 37 + tx * 11 + c), axis=1)
                    w.write(data=np.ascontiguousarray(a)[..., None], plane={"C": c, "T": 0, "Z": 0},
                            location=(tx * t, ty * t))


def cell(reader: str, workload: str, path: str) -> dict:
    if reader == "tilescope":
        import tilescope

        sc = tilescope.open(path).scenes[0]
        fn = {"region": lambda: sc.read(ROI, channels=[0]),
              "overview": lambda: sc.read(size=(768, 768), channels=[0])}[workload]
    elif reader == "pylibczirw":
        from pylibCZIrw import czi as pyczi

        cm = pyczi.open_czi(path)
        d = cm.__enter__()
        r = d.total_bounding_rectangle
        fn = {"region": lambda: d.read(plane={"C": 0}, roi=ROI),
              "overview": lambda: d.read(plane={"C": 0}, roi=(0, 0, r.w, r.h), zoom=1 / 16)}[workload]
    else:
        import slideio

        sc = slideio.open_slide(path, "CZI").get_scene(0)
        fn = {"region": lambda: sc.read_block(ROI, channel_indices=[0]),
              "overview": lambda: sc.read_block(sc.rect, size=(768, 0), channel_indices=[0])}[workload]
    times = []
    for _ in range(3):  # (the closures keep each reader's objects alive)
        t0 = time.perf_counter()
        a = fn()
        times.append(time.perf_counter() - t0)
    # the first call is the one to compare: later ones may be served from a reader's cache
    return dict(reader=reader, workload=workload, first_ms=times[0] * 1000, best_ms=min(times) * 1000,
                shape=list(a.shape), mp_per_s=a.shape[0] * a.shape[1] / 1e6 / times[0])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        print("RESULT " + json.dumps(cell(*sys.argv[2:5])))
        return 0
    path = os.path.join(HERE, "data", "bench.czi")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"writing {path}", flush=True)
        write(path)
    with open(path, "rb", buffering=0) as f:  # page cache warm
        while f.read(1 << 24):
            pass
    rows = []
    for wl in ("region", "overview"):
        for rd in ("tilescope", "pylibczirw", "slideio"):
            cmd = [sys.executable, __file__, "--cell", rd, wl, path]
            p = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            r = json.loads(line[-1][7:]) if line else dict(reader=rd, workload=wl,
                                                           error=(p.stderr.strip().splitlines() or ["?"])[-1])
            rows.append(r)
            print(r, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
