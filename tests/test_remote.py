"""Slides read from real servers on 127.0.0.1 — Debian's nginx (byte ranges; a location without
them; a forbidden one) and moto's standalone S3 server — equal to the same files read locally:
metadata, levels, every plane of every scene, a level-0 region, associated images. Plus what a
remote read costs in requests, and its errors."""

from __future__ import annotations

import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

import tilescope
import tilescope.openslide as dropin
from fuzz import seeds
from tilescope.errors import (
    RemoteError,
    SourceChangedError,
    SourceNotFoundError,
    TilescopeError,
    UnsupportedFormatError,
)
from tools import servers, synth


def _need(what: str, ok: bool) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{what} is not installed: .ci/run installs it")
        pytest.skip(f"{what} is not installed")


@pytest.fixture(scope="module")
def files(labelled, tiffs, svs_variants, tmp_path_factory):
    """{name: local path} of one file per single-file format, linked into a served folder."""
    d = tmp_path_factory.mktemp("dialects")
    made = {
        "svs": labelled["svs"], "ome": labelled["ome"], "czi": labelled["czi"],
        "tiff-subifds": tiffs["jpeg-subifds"], "tiff-planar": tiffs["zstd-planar"], "svs-bigtiff": svs_variants["bigtiff"],
        "ndpi": synth.write_ndpi(d / "slide.ndpi", 1920, 1440, focal_planes=(0, 1)),
        "philips": synth.write_philips(d / "philips.tiff", 2000, 1500),
        "qptiff": synth.write_qptiff(d / "slide.qptiff", 2000, 1500),
        "scn": synth.write_scn(d / "slide.scn"),
        "bif": synth.write_bif(d / "slide.bif"),
        "scanimage": synth.write_scanimage(d / "stack.tif", 96, 64, channels=2, slices=3, volumes=2),
        "png": d / "plain.png",
    }
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), np.uint8)).save(made["png"])
    return {k: os.fspath(v) for k, v in made.items()}


@pytest.fixture(scope="module")
def www(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    for name, path in files.items():
        os.symlink(path, root / (name + os.path.splitext(path)[1]))
    return root


def _name(files, kind):
    return kind + os.path.splitext(files[kind])[1]


@pytest.fixture(scope="module")
def http(www):
    _need("nginx", servers.nginx_binary() is not None)
    with servers.nginx(os.fspath(www)) as url:
        yield url


@pytest.fixture(scope="module")
def s3(files):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    with servers.s3_server() as endpoint:
        client = servers.s3_client(endpoint)
        client.create_bucket(Bucket="slides")
        client.create_bucket(Bucket="public", ACL="public-read")
        for name, path in files.items():
            client.upload_file(path, "slides", f"cohort/{_name(files, name)}")
        client.upload_file(files["svs"], "public", "open.svs", ExtraArgs={"ACL": "public-read"})
        yield endpoint


def _same(remote: tilescope.Slide, local: tilescope.Slide) -> None:
    assert remote.driver == local.driver
    assert remote.metadata == local.metadata
    assert len(remote.scenes) == len(local.scenes)
    for rs, ls in zip(remote.scenes, local.scenes, strict=True):
        assert (rs.size, rs.levels, rs.channel_names, rs.dtype) == (ls.size, ls.levels, ls.channel_names, ls.dtype)
        planes = {"z": (0, ls.num_z_slices), "t": (0, ls.num_t_frames)}
        np.testing.assert_array_equal(rs.read(size=(128, 0), **planes), ls.read(size=(128, 0), **planes))
        rect = (ls.size[0] // 3, ls.size[1] // 3, min(700, ls.size[0] // 2), min(600, ls.size[1] // 2))
        np.testing.assert_array_equal(rs.read(rect), ls.read(rect))
        last = len(ls.levels) - 1
        np.testing.assert_array_equal(rs.read_level(last), ls.read_level(last))
    assert sorted(remote.associated) == sorted(local.associated)
    for k in local.associated:
        np.testing.assert_array_equal(remote.associated[k], local.associated[k])


KINDS = ["svs", "ome", "czi", "tiff-subifds", "tiff-planar", "svs-bigtiff", "ndpi", "philips", "qptiff", "scn",
         "bif", "scanimage", "png"]


@pytest.mark.parametrize("kind", KINDS)
def test_http_equals_local(http, files, kind):
    with tilescope.open(f"{http}/{_name(files, kind)}") as r, tilescope.open(files[kind]) as loc:
        _same(r, loc)


@pytest.mark.parametrize("kind", KINDS)
def test_s3_equals_local(s3, files, kind):
    url = f"s3://slides/cohort/{_name(files, kind)}"
    with tilescope.open(url, storage_options=servers.s3_options(s3)) as r, tilescope.open(files[kind]) as loc:
        _same(r, loc)


def test_requests_open_and_region(http, files):
    """An SVS opens in 3 requests; a 1024² region at level 0 asks for one coalesced span per row
    of tiles, all in flight at once, and again for nothing once they are held."""
    big = files["svs"]
    with tilescope.open(f"{http}/{_name(files, 'svs')}", cache=tilescope.TileCache(0)) as r:
        assert r.source.requests <= 3
        sc = r.scenes[0]
        before = r.source.requests
        rect = (2, 2, 600, 500)  # 3x2 tiles of 256
        with tilescope.open(big) as loc:
            np.testing.assert_array_equal(sc.read(rect), loc.scenes[0].read(rect))
        rows = (rect[1] + rect[3] - 1) // 256 - rect[1] // 256 + 1
        assert r.source.requests - before <= rows
        before = r.source.requests
        sc.read(rect)  # the bytes are in the block cache (the tile cache is off)
        assert r.source.requests == before


def test_a_read_takes_its_spans_whatever_the_block_cache(http, files):
    """With no block cache (or one smaller than a read), the spans fetched for a read stay until
    the read has taken its pieces from them: one request per span, not one per piece, and the
    cache back within its bound afterwards."""
    url = f"{http}/{_name(files, 'svs')}"
    rect = (1282, 1026, 600, 500)  # 3x2 tiles of 256, past the bytes the open read: two spans (rows)
    with tilescope.open(files["svs"]) as loc:
        want = loc.scenes[0].read(rect)
    for cache_bytes in (0, 4096):
        with tilescope.open(url, cache=tilescope.TileCache(0), cache_bytes=cache_bytes) as r:
            before = r.source.requests
            np.testing.assert_array_equal(r.scenes[0].read(rect), want)
            assert r.source.requests - before <= 2, cache_bytes
            assert r.source._held <= cache_bytes


def test_s3_open_requests(s3, files):
    """On S3 the first ranged GET also gives the size and the ETag: no HEAD before it."""
    url = f"s3://slides/cohort/{_name(files, 'svs')}"
    with tilescope.open(url, storage_options=servers.s3_options(s3), cache=tilescope.TileCache(0)) as r:
        assert r.source.requests <= 3
        assert r.source.identity[3]  # the ETag, checked by every later read


@pytest.mark.parametrize("block_cache", [64 << 20, 0])
def test_threads_bit_identical(http, files, block_cache):
    """4 threads, small reads and no coalescing (and no block cache: every span dropped once its
    waiters have it) read what one thread reads."""
    url = f"{http}/{_name(files, 'ome')}"
    with tilescope.open(url, threads=1, cache=tilescope.TileCache(0)) as one, \
            tilescope.open(url, threads=4, cache=tilescope.TileCache(0), min_read=4096, gap=0,
                           cache_bytes=block_cache) as many:
        for sc1, sc4 in zip(one.scenes, many.scenes, strict=True):
            np.testing.assert_array_equal(sc1.read(size=(300, 0), z=(0, 3), t=(0, 2), channels=[0, 2]),
                                          sc4.read(size=(300, 0), z=(0, 3), t=(0, 2), channels=[0, 2]))
        assert many.source._held <= block_cache  # the block cache keeps to its bound


def test_server_without_ranges(http, files):
    """nginx with ``max_ranges 0`` answers 200 with the whole body: a small file is read from
    memory, a file above ``max_download`` is refused, naming the URL."""
    url = f"{http}/noranges/{_name(files, 'philips')}"
    with tilescope.open(url) as r, tilescope.open(files["philips"]) as loc:
        assert r.source.requests == 1
        _same(r, loc)
    with pytest.raises(RemoteError, match=r"does not serve byte ranges.*max_download") as e:
        tilescope.open(url, max_download=100_000)
    assert url in str(e.value)


def test_http_errors(http, files, tmp_path):
    with pytest.raises(SourceNotFoundError, match=r"nope\.svs.*404"):
        tilescope.open(f"{http}/nope.svs")
    with pytest.raises(RemoteError, match="access denied \\(403\\)"):
        tilescope.open(f"{http}/private/{_name(files, 'svs')}")
    port = servers.free_port()  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(RemoteError, match=f"127.0.0.1:{port}"):
        tilescope.open(f"http://127.0.0.1:{port}/slide.svs", retries=1)
    assert time.monotonic() - t0 < 5
    auth = f"{http}/auth/{_name(files, 'svs')}"
    with pytest.raises(RemoteError, match="access denied \\(401\\)"):
        tilescope.open(auth)
    with tilescope.open(auth, storage_options={"headers": {"Authorization": "Bearer tilescope"}}) as r, \
            tilescope.open(files["svs"]) as loc:
        np.testing.assert_array_equal(r.scenes[0].read((0, 0, 600, 400)), loc.scenes[0].read((0, 0, 600, 400)))
    with pytest.raises(RemoteError, match="unknown storage_options"):
        tilescope.open(f"{http}/{_name(files, 'svs')}", storage_options={"anon": True})


def test_throttled_server_retries(http, files):
    """nginx's request limit answers 429 to most of a read's parallel requests: each is retried
    with back-off until served (pixels equal); with no retries the read fails, typed (on a 429, or
    on a kept-alive connection nginx closed after one)."""
    url = f"{http}/throttled/{_name(files, 'svs')}"
    with tilescope.open(url, retries=8, min_read=4096, gap=0, cache=tilescope.TileCache(0)) as r, \
            tilescope.open(files["svs"]) as loc:
        rect = (0, 0, 1500, 1000)
        np.testing.assert_array_equal(r.scenes[0].read(rect), loc.scenes[0].read(rect))
        assert r.source.requests > 6
    time.sleep(1)
    with tilescope.open(url, retries=0, min_read=4096, gap=0, cache=tilescope.TileCache(0)) as r, \
            pytest.raises(RemoteError, match=r"throttled/svs\.svs: .*(429|GET failed)"):
        for _ in range(3):
            r.scenes[0].read((0, 0, 1500, 1000))


def test_changed_while_open(http, www, files, tmp_path):
    """A file replaced on the server after the open: the next read that asks the server raises
    SourceChangedError (If-Match on the open's ETag), never mixes old and new bytes."""
    name = "changing" + os.path.splitext(files["svs"])[1]
    shutil.copy(files["svs"], www / name)
    try:
        with tilescope.open(f"{http}/{name}", cache=tilescope.TileCache(0), min_read=4096) as r:
            sc = r.scenes[0]
            sc.read((0, 0, 256, 256))
            time.sleep(1.1)  # a new mtime: nginx's ETag changes
            shutil.copy(files["svs"], www / (name + ".new"))
            os.replace(www / (name + ".new"), www / name)
            with pytest.raises(SourceChangedError, match=name):
                sc.read((sc.size[0] - 600, sc.size[1] - 600, 512, 512))
    finally:
        os.remove(www / name)


def test_s3_changed_while_open(s3, files, tmp_path):
    """An object overwritten after the open: reads carry If-Match on the open's ETag, and the next
    one that asks the bucket raises SourceChangedError."""
    client = servers.s3_client(s3)
    client.upload_file(files["svs"], "slides", "changing.svs")
    so = servers.s3_options(s3)
    with tilescope.open("s3://slides/changing.svs", storage_options=so, cache=tilescope.TileCache(0),
                        min_read=4096) as r:
        sc = r.scenes[0]
        sc.read((0, 0, 256, 256))
        changed = bytearray(pathlib.Path(files["svs"]).read_bytes())  # the same size, other bytes
        changed[-100:] = bytes(100)
        client.put_object(Bucket="slides", Key="changing.svs", Body=bytes(changed))
        with pytest.raises(SourceChangedError, match="changing"):
            sc.read((sc.size[0] - 600, sc.size[1] - 600, 512, 512))


def test_s3_credentials(s3, files):
    """A private bucket refuses anonymous reads with a typed error; a public one serves them."""
    with pytest.raises(RemoteError, match=r"s3://slides/.*access denied"):
        tilescope.open(f"s3://slides/cohort/{_name(files, 'svs')}", storage_options={"anon": True, "endpoint_url": s3})
    with pytest.raises(SourceNotFoundError, match=r"s3://slides/cohort/nope\.svs"):
        tilescope.open("s3://slides/cohort/nope.svs", storage_options=servers.s3_options(s3))
    with tilescope.open("s3://public/open.svs", storage_options={"anon": True, "endpoint_url": s3}) as r, \
            tilescope.open(files["svs"]) as loc:
        np.testing.assert_array_equal(r.scenes[0].read(size=(256, 0)), loc.scenes[0].read(size=(256, 0)))


def _child_read(slide_bytes: bytes) -> bytes:
    slide = pickle.loads(slide_bytes)
    return slide.scenes[0].read((100, 100, 300, 300)).tobytes()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pickle_and_processes(http, s3, files, method):
    import multiprocessing as mp

    with tilescope.open(files["svs"]) as loc:
        want = loc.scenes[0].read((100, 100, 300, 300)).tobytes()
    for url, kw in ((f"{http}/{_name(files, 'svs')}", {}),
                    (f"s3://slides/cohort/{_name(files, 'svs')}", {"storage_options": servers.s3_options(s3)})):
        with tilescope.open(url, **kw) as r:
            r.scenes[0].read((0, 0, 64, 64))  # used before the fork: the child must not inherit a stuck client
            with mp.get_context(method).Pool(1) as pool:
                assert pool.apply(_child_read, (pickle.dumps(r),), ) == want


def test_dropin_and_cli_on_urls(http, files):
    url = f"{http}/{_name(files, 'svs')}"
    with dropin.OpenSlide(url) as o, dropin.OpenSlide(files["svs"]) as loc:
        assert o.properties == loc.properties
        assert o.read_region((10, 10), 1, (200, 100)).tobytes() == loc.read_region((10, 10), 1, (200, 100)).tobytes()
    assert dropin.OpenSlide.detect_format(url) == "aperio"
    out = subprocess.run([sys.executable, "-m", "tilescope", "info", url], capture_output=True, text=True,
                         check=True).stdout
    assert "SVS" in out and url in out


def _dicom_files(folder):
    return sorted(os.path.join(folder, n) for n in os.listdir(folder))


@pytest.fixture(scope="module")
def dicom_remote(converted, http, s3, www):
    """wsidicomizer's DICOM slide (every level, label, overview): served by nginx under dicom/ and
    uploaded to the bucket under the prefix dicom/slide/, beside a non-DICOM object."""
    folder = converted[1]
    os.symlink(folder, www / "dicom")
    client = servers.s3_client(s3)
    for p in _dicom_files(folder):
        client.upload_file(p, "slides", f"dicom/slide/{os.path.basename(p)}")
    client.put_object(Bucket="slides", Key="dicom/slide/README.txt", Body=b"not a DICOM file")
    return folder


def test_dicom_from_a_bucket_prefix_and_from_one_of_its_files(dicom_remote, s3):
    """A bucket's prefix opens as a local folder does; one instance's URL gathers the others under
    its prefix, as a local file gathers its folder; frames come by range requests."""
    so = {"storage_options": servers.s3_options(s3)}
    level0 = max(_dicom_files(dicom_remote), key=os.path.getsize)
    with tilescope.open("s3://slides/dicom/slide/", **so) as r, tilescope.open(dicom_remote) as loc:
        assert r.driver == "DICOM"
        _same(r, loc)
    url = f"s3://slides/dicom/slide/{os.path.basename(level0)}"
    with tilescope.open(url, **so) as r, tilescope.open(level0) as loc:
        _same(r, loc)
        assert len(r.scenes[0].levels) == len(loc.scenes[0].levels) > 1


def test_dicom_from_a_list_of_urls(dicom_remote, http):
    """A web server lists no folder: a DICOM slide there opens by the list of its files' URLs."""
    files = _dicom_files(dicom_remote)
    urls = [f"{http}/dicom/{os.path.basename(p)}" for p in files]
    with tilescope.open(urls) as r, tilescope.open(files) as loc:
        _same(r, loc)
        blob = pickle.dumps(r)
    with pickle.loads(blob) as again, tilescope.open(files) as loc:
        np.testing.assert_array_equal(again.scenes[0].read(size=(200, 0)), loc.scenes[0].read(size=(200, 0)))


def test_local_only_formats(http, www, tmp_path):
    """Drivers that open files by path (AFI's channel files, GDAL) refuse a URL by name."""
    afi = seeds.make("afi", str(tmp_path))["slide.afi"]
    os.symlink(os.path.dirname(afi), www / "afi")
    with pytest.raises(UnsupportedFormatError, match=r"slide\.afi: AFI slides are read from local files only"):
        tilescope.open(f"{http}/afi/slide.afi")


def test_errors_are_typed(http):
    for url in (f"{http}/", f"{http}/noranges/nope"):
        with pytest.raises(TilescopeError):
            tilescope.open(url)
