"""Resource guards: handles and memory stay flat over many opens and reads; forged sizes, tables,
IFD chains and bombs are refused fast and before allocating; 16 threads read what one does; a
misbehaving DICOMweb server gives a typed error in bounded time and memory."""

from __future__ import annotations

import gc
import os
import pathlib
import resource
import shutil
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tifffile

import tilescope
from fuzz import corpus, seeds
from fuzz.webserver import MULTIPART, frames_of, multipart


@pytest.fixture(scope="module")
def seed_files(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("seeds"))
    return {f: seeds.make(f, root) for f in ("tiff", "czi", "dicom", "dicomweb")}


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_handles_flat_over_5000_cycles_and_2000_failed_opens(seed_files, tmp_path):
    svs = seed_files["tiff"]["svs.svs"]
    gc.collect()  # descriptors earlier tests left to the collector (sockets, ...) go now, not mid-count
    before = _fds()
    for i in range(5000):
        with tilescope.open(svs) as s:
            s.scenes[0].read((i % 500, i % 400, 64, 64))
    assert _fds() <= before  # not one more (others' may still close)
    bad = tmp_path / "bad.svs"
    shutil.copy(svs, bad)
    corpus._tag(0, "TileWidth", None, 0)(str(bad))
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00" + b"\xff" * 100)
    for i in range(2000):
        with pytest.raises(tilescope.CorruptDataError):
            tilescope.open(bad if i % 2 else junk)
    assert _fds() <= before


def test_rss_flat_over_10000_reads_with_the_cache_capped(seed_files):
    rng = np.random.default_rng(0)
    with tilescope.open(seed_files["tiff"]["svs.svs"], cache=tilescope.TileCache(400_000)) as s:  # two tiles: reads decode
        sc = s.scenes[0]
        for x, y in rng.integers(0, 340, (1000, 2)):
            sc.read((int(x), int(y), 256, 256))
        start = _rss_mb()
        for x, y in rng.integers(0, 340, (9000, 2)):
            sc.read((int(x), int(y), 256, 256))
        assert _rss_mb() - start < 16


def _quick(fn, error, match=None):
    """``fn`` raises ``error`` in under a second, with the process's peak RSS nearly unchanged."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(error, match=match):
        fn()
    assert time.monotonic() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100 << 10  # KiB


def _damaged(seed_files, tmp_path, damage, name="svs.svs"):
    p = str(tmp_path / name)
    shutil.copy(seed_files["tiff"][name], p)
    damage(p)
    return p


def test_a_claimed_billion_by_billion_image_is_refused(seed_files, tmp_path):
    def both(p):
        corpus._tag(0, "ImageWidth", None, 10**9)(p)
        corpus._tag(0, "ImageLength", None, 10**9)(p)
    p = _damaged(seed_files, tmp_path, both)
    _quick(lambda: tilescope.open(p), tilescope.CorruptDataError, r"svs\.svs.*TileOffsets has 6 values")


def test_a_2_31_entry_tile_table_is_refused(seed_files, tmp_path):
    p = _damaged(seed_files, tmp_path, corpus._entry_count(0, "TileOffsets", 1 << 31))
    _quick(lambda: tilescope.open(p), tilescope.CorruptDataError, r"svs\.svs")


def _chain(path, n, loop_to=None):
    """A one-page TIFF followed by ``n`` empty IFDs, the last linking to IFD ``loop_to`` (or none)."""
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), tile=(16, 16))
    with tifffile.TiffFile(path) as tf:
        p = tf.pages[0]
        link = p.offset + 2 + len(p.tags) * 12
    b = bytearray(pathlib.Path(path).read_bytes())
    b += b"\0" * (len(b) % 2)
    start = len(b)
    nxt = np.arange(1, n + 1, dtype="<u4") * 6 + start
    nxt[-1] = 0 if loop_to is None else start + 6 * loop_to
    ifds = np.zeros(n, [("count", "<u2"), ("next", "<u4")])
    ifds["next"] = nxt
    b[link:link + 4] = struct.pack("<I", start)
    with open(path, "wb") as f:
        f.write(bytes(b) + ifds.tobytes())


def test_an_ifd_chain_of_a_million_pages_is_refused(tmp_path):
    p = str(tmp_path / "chain.tif")
    _chain(p, 10**6)
    _quick(lambda: tilescope.open(p), tilescope.TooLargeError, r"chain\.tif: more than 65536 TIFF pages")


@pytest.mark.parametrize("loop_to", [0, 500])
def test_a_looping_ifd_chain_opens_at_once(tmp_path, loop_to):
    p = str(tmp_path / "loop.tif")
    _chain(p, 1000, loop_to)
    start = time.monotonic()
    with tilescope.open(p) as s:
        assert s.scenes[0].size == (64, 64)
        s.scenes[0].read()
    assert time.monotonic() - start < 1.0


def test_a_zip_bomb_tile_is_refused_before_decoding(tmp_path):
    """One zlib tile that claims 65536² pixels (4 GiB decoded from a few KiB)."""
    p = str(tmp_path / "bomb.tif")
    tifffile.imwrite(p, np.zeros((256, 256), np.uint8), tile=(256, 256), compression="zlib")
    for tag in ("ImageWidth", "ImageLength", "TileWidth", "TileLength"):
        corpus._tag(0, tag, None, 65536)(p)
    with tilescope.open(p) as s:
        _quick(lambda: s.scenes[0].read((0, 0, 16, 16)), tilescope.TooLargeError, r"bomb\.tif.*max_decode_pixels")


def _regions(size, n=400, seed=3):
    rng = np.random.default_rng(seed)
    w, h = size
    return [(int(x), int(y), int(rng.integers(1, 300)), int(rng.integers(1, 300)))
            for x, y in zip(rng.integers(-50, w, n), rng.integers(-50, h, n), strict=True)]


@pytest.mark.parametrize("cache", ["off", "shared", "tiny"])
@pytest.mark.parametrize("kind", ["svs", "czi mosaic", "dicom"])
def test_16_threads_read_what_one_reads(seed_files, kind, cache):
    path = {"svs": seed_files["tiff"]["svs.svs"], "czi mosaic": seed_files["czi"]["mosaic.czi"],
            "dicom": os.path.dirname(next(iter(seed_files["dicom"].values())))}[kind]
    caches = {"off": tilescope.TileCache(0), "shared": None, "tiny": tilescope.TileCache(200_000)}
    with tilescope.open(path, threads=1, cache=tilescope.TileCache(0)) as serial_slide:
        sc = serial_slide.scenes[0]
        regions = _regions(sc.size)
        want = [sc.read(r) for r in regions]
    with tilescope.open(path) as s:
        if caches[cache] is not None:
            s.set_cache(caches[cache])
        sc = s.scenes[0]
        with ThreadPoolExecutor(16) as ex:
            got = list(ex.map(sc.read, regions))
    for r, a, b in zip(regions, want, got, strict=True):
        assert np.array_equal(a, b), r


class _Hostile(BaseHTTPRequestHandler):
    """Serves the DICOMweb seed's metadata, and the frames asked for as ``mode`` says: as they
    are, slowly, truncated, with a wrong content type, or 10 GB long."""

    meta = b"[]"
    frames: tuple[bytes, ...] = ()
    mode = "ok"

    def do_GET(self):
        if "/frames/" not in self.path:
            return self._send(self.meta, "application/dicom+json")
        numbers = [int(n) for n in self.path.rsplit("/frames/", 1)[1].split("?")[0].split(",")]
        body = multipart([self.frames[(n - 1) % len(self.frames)] for n in numbers])
        mode = _Hostile.mode
        if mode == "slow":  # a byte every 0.2 s: each read is quick, the whole answer is not
            self.send_response(200)
            self.send_header("Content-Type", MULTIPART)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
        elif mode == "truncated":
            self._send(body[: len(body) // 10], MULTIPART)
        elif mode == "content type":
            self._send(body, "text/html")
        elif mode == "10 GB":
            self.send_response(200)
            self.send_header("Content-Type", MULTIPART)
            self.end_headers()  # no length: chunks until the client stops reading
            chunk = b"\0" * (1 << 20)
            try:
                for _ in range(10 * 1024):
                    self.wfile.write(chunk)
            except OSError:
                pass
        else:
            self._send(body, MULTIPART)

    def _send(self, data, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hostile(seed_files):
    files = seed_files["dicomweb"]
    _Hostile.meta = pathlib.Path(files["metadata.json"]).read_bytes()
    _Hostile.frames = tuple(frames_of(pathlib.Path(files["frames.multipart"]).read_bytes()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"dicomweb+http://127.0.0.1:{server.server_address[1]}/dicom-web"
    server.shutdown()


@pytest.mark.parametrize(("mode", "error", "match"), [
    ("slow", tilescope.RemoteError, "still arriving after the 1.0 s timeout"),
    ("truncated", tilescope.TilescopeError, None),
    ("content type", tilescope.TilescopeError, None),
    ("10 GB", tilescope.TooLargeError, "above max_response_bytes|more than max_response_bytes"),
])
def test_a_misbehaving_dicomweb_server(hostile, mode, error, match):
    _Hostile.mode = mode
    """Opening asks for a frame (to tell its encoding), reads ask for more: one of them fails."""
    start = time.monotonic()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def open_and_read():
        with tilescope.open(hostile, study="1.2.3", series="4.5.6", timeout=1.0, retries=0,
                            max_response_bytes=64 << 20, cache=tilescope.TileCache(0)) as s:
            s.scenes[0].read((0, 0, 64, 64))
    with pytest.raises(error, match=match):
        open_and_read()
    assert time.monotonic() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200 << 10  # KiB


def test_the_well_behaved_answers_read(hostile):
    """The same server answering properly: the errors above come from the misbehaviour."""
    _Hostile.mode = "ok"
    with tilescope.open(hostile, study="1.2.3", series="4.5.6", cache=tilescope.TileCache(0)) as s:
        assert s.scenes[0].read((0, 0, 64, 64)).shape == (64, 64, 3)


def test_a_jpeg_piece_whose_own_header_is_forged_larger_is_refused_before_decoding(tmp_path):
    """The piece's place is 256x256 but its SOF says 62975 rows (138 MB decoded): refused from
    the header (found by the DICOM fuzzer; the same holds for any container)."""
    import tracemalloc

    p = str(tmp_path / "sof.tif")
    rng = np.random.default_rng(1)
    tifffile.imwrite(p, rng.integers(0, 255, (256, 256, 3), np.uint8), tile=(256, 256), compression="jpeg",
                     photometric="rgb")
    with tifffile.TiffFile(p) as tf:
        off, n = tf.pages.first.dataoffsets[0], tf.pages.first.databytecounts[0]
    with open(p, "r+b") as f:
        f.seek(off)
        tile = bytearray(f.read(n))
        sof = tile.index(b"\xff\xc0")
        tile[sof + 5:sof + 7] = (62975).to_bytes(2, "big")
        f.seek(off)
        f.write(tile)
    tracemalloc.start()
    try:
        with tilescope.open(p, cache=tilescope.TileCache(0)) as s, \
                pytest.raises(tilescope.CorruptDataError, match=r"sof\.tif.*62975 pixels, more than its 256x256"):
            s.scenes[0].read((0, 0, 16, 16))
        assert tracemalloc.get_traced_memory()[1] < 32 << 20
    finally:
        tracemalloc.stop()


def test_a_dicom_tile_grid_of_67_million_cells_is_refused_at_open(tmp_path):
    """A fuzzer's DICOM: TotalPixelMatrixColumns 67109014 in 1-pixel-wide tiles built 3.3 GB of
    piece tables before anything refused it; now the grid is checked first."""
    import shutil
    import tracemalloc

    p = str(tmp_path / "grid.dcm")
    shutil.copy(os.path.join(os.path.dirname(__file__), os.pardir, "fuzz", "regressions", "dicom",
                             "oom-forged-tile-grid"), p)
    tracemalloc.start()
    try:
        with pytest.raises(tilescope.CorruptDataError, match=r"grid\.dcm: .*67109014 tiles, above 16777216"):
            tilescope.open(p)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()


def test_the_parse_cache_is_bounded_by_the_bytes_of_its_tables(seed_files, tmp_path):
    """A fuzzing run ran out of memory on inputs that each opened fine: what they parsed (forged
    DICOM levels of millions of tiles) stayed in the parse cache, and glibc's heap kept growing
    as they came and went. The cache keeps at most ``_PARSED_BYTES`` of what its slides hold, and
    no slide that holds more than ``_PARSED_ONE``; slides of real sizes are kept."""
    import pydicom

    level0 = next(p for _, p in sorted(seed_files["dicom"].items())
                  if pydicom.dcmread(p, stop_before_pixels=True).ImageType[2] == "VOLUME")
    ds = pydicom.dcmread(level0)
    ds.TotalPixelMatrixColumns = ds.TotalPixelMatrixRows = 400_000  # 2.4 M tiles: ~40 MB of tables
    tilescope._PARSED.clear()
    for i in range(12):
        p = str(tmp_path / f"big{i}.dcm")
        ds.save_as(p)
        with tilescope.open(p) as s:
            assert s.scenes[0].size == (400_000, 400_000)
            assert tilescope._footprint(s) > tilescope._PARSED_ONE
        # measured when the next slide is parsed: only the last one is still there, unmeasured
        assert [e[2] for e in tilescope._PARSED.values()] == [None]
    with tilescope.open(level0):
        pass
    with tilescope.open(seed_files["tiff"]["svs.svs"]):
        pass
    sizes = [e[2] for e in tilescope._PARSED.values()]
    assert len(sizes) <= 2 and sizes[-1] is None and all(n < 1 << 20 for n in sizes[:-1])
