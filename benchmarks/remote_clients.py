#!/usr/bin/env python3
"""The HTTP clients a remote source could stand on, fetching the same byte ranges of the bench SVS
from nginx on 127.0.0.1: the standard library's http.client (what tilescope.remote uses: a
keep-alive connection per thread), urllib3 (what it used before), obstore (Rust object_store) and
fsspec's HTTP filesystem (aiohttp), one range at a time and 8 in flight, and whether each still
works in a forked child that inherits a used client.

    python benchmarks/remote_clients.py [--ranges 400] [--size 65536]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def clients(url: str) -> dict:
    import fsspec
    import obstore
    import urllib3
    from obstore.store import HTTPStore

    pool = urllib3.PoolManager(maxsize=8)
    base, name = url.rsplit("/", 1)
    store = HTTPStore.from_url(base, client_options={"allow_http": True})
    fs = fsspec.filesystem("http")

    import http.client
    import threading
    from urllib.parse import urlsplit

    parts, local = urlsplit(url), threading.local()

    def by_http_client(s: int, e: int) -> bytes:
        conn = local.__dict__.get("conn")
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port)
        conn.request("GET", parts.path, headers={"Range": f"bytes={s}-{e - 1}"})
        return conn.getresponse().read()

    def by_urllib3(s: int, e: int) -> bytes:
        return pool.request("GET", url, headers={"Range": f"bytes={s}-{e - 1}"}).data

    def by_obstore(s: int, e: int) -> bytes:
        return bytes(obstore.get_range(store, name, start=s, end=e))

    def by_fsspec(s: int, e: int) -> bytes:
        return fs.cat_file(url, start=s, end=e)

    return {"http.client": by_http_client, "urllib3": by_urllib3, "obstore": by_obstore,
            "fsspec-http": by_fsspec}


def _forked_child_reads(get) -> str:
    """Whether a forked child can use the parent's (used) client within 10 s."""
    pid = os.fork()
    if pid == 0:
        try:
            get(0, 1024)
            os._exit(0)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "works" if os.waitstatus_to_exitcode(status) == 0 else "fails"
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hangs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slide", default=os.path.join(HERE, "data", "slide.svs"))
    ap.add_argument("--ranges", type=int, default=400)
    ap.add_argument("--size", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from tools import servers

    size = os.path.getsize(a.slide)
    starts = np.random.default_rng(0).integers(0, size - a.size, a.ranges)
    ranges = [(int(s), int(s) + a.size) for s in starts]
    rows = []
    with servers.nginx(os.path.dirname(os.path.abspath(a.slide))) as http:
        fns = clients(f"{http}/{os.path.basename(a.slide)}")
        times: dict = {(n, m): [] for n in fns for m in ("serial", "8 threads")}
        for _ in range(a.repeats):  # interleaved: every client once per round
            for n, get in fns.items():
                t0 = time.perf_counter()
                for s, e in ranges:
                    assert len(get(s, e)) == e - s
                times[n, "serial"].append(time.perf_counter() - t0)
                with ThreadPoolExecutor(8) as ex:
                    t0 = time.perf_counter()
                    assert all(len(d) == a.size for d in ex.map(lambda r, g=get: g(*r), ranges))
                    times[n, "8 threads"].append(time.perf_counter() - t0)
        for n, get in fns.items():
            fork = _forked_child_reads(get)
            ser, par = (1000 * min(times[n, m]) / a.ranges for m in ("serial", "8 threads"))
            rows.append(f"| {n} | {ser:.3f} | {par:.3f} | {fork} |")
    print(f"{a.ranges} random {a.size}-byte ranges of {a.slide} from nginx on loopback, best of "
          f"{a.repeats} interleaved rounds, load average {os.getloadavg()[0]:.2f}\n")
    print("| client | ms per range, serial | ms per range, 8 in flight | forked child |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
