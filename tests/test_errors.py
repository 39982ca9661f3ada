"""Bad input and bad requests: typed tilescope errors naming the file, no crash, hang or leak."""

from __future__ import annotations

import os
import shutil

import pytest
import tifffile

import tilescope
from tilescope import (
    CorruptDataError,
    InvalidRequestError,
    SlideClosedError,
    SourceNotFoundError,
    TilescopeError,
    TooLargeError,
    UnsupportedFormatError,
)
from tools import synth


@pytest.fixture(scope="module")
def small_svs(fixtures_dir):
    path = str(fixtures_dir / "small.svs")
    if not os.path.exists(path):
        synth.write_svs(path, 1000, 800, downsamples=(1, 4), seed=5)
    return path


def _copy(src, tmp_path, name="bad.svs"):
    dst = str(tmp_path / name)
    shutil.copy(src, dst)
    return dst


def _overwrite(path, tag, index, value, page=0):
    with tifffile.TiffFile(path, mode="r+b") as tf:
        t = tf.pages[page].tags[tag]
        v = list(t.value) if isinstance(t.value, tuple | list) else t.value
        if index is None:
            v = value
        else:
            v[index] = value
        t.overwrite(v)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_missing_file(tmp_path):
    with pytest.raises(SourceNotFoundError, match="no such file") as e:
        tilescope.open(tmp_path / "nope.svs")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, TilescopeError)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SourceNotFoundError, match="no such file"):  # a path through a file
        tilescope.open(tmp_path / "a-file" / "slide.svs")


def test_directory(tmp_path):
    with pytest.raises(UnsupportedFormatError, match="directory"):
        tilescope.open(tmp_path)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.svs"
    p.write_bytes(b"")
    with pytest.raises(UnsupportedFormatError, match=r"empty\.svs: file is empty"):
        tilescope.open(p)
    assert tilescope.detect(p) is None


def test_non_image_file(tmp_path):
    p = tmp_path / "notes.svs"
    p.write_text("these are not the pixels you are looking for\n" * 10)
    with pytest.raises(UnsupportedFormatError, match=r"notes\.svs: not a format tilescope reads"):
        tilescope.open(p)


def test_truncated_inside_the_ifds(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    with open(p, "r+b") as f:
        f.truncate(12)
    with pytest.raises(CorruptDataError, match=r"bad\.svs"):
        tilescope.open(p)


def test_truncated_tile_data(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        cut = int(page.dataoffsets[-1]) + 10  # the last level-0 tile loses its bytes
    with open(p, "r+b") as f:
        f.truncate(cut)
    with pytest.raises(TilescopeError, match=r"bad\.svs") as e, tilescope.open(p) as s:
        s.scenes[0].read((900, 700, 100, 100))
    assert isinstance(e.value, CorruptDataError)


def test_zero_length_tile(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    _overwrite(p, "TileByteCounts", 1, 0)
    with tilescope.open(p) as s:
        s.scenes[0].read((0, 0, 256, 256))  # tile 0 is fine
        with pytest.raises(CorruptDataError, match=r"bad\.svs: level 0: piece 1 has no data"):
            s.scenes[0].read((256, 0, 256, 256))


def test_missing_tile_offset(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    _overwrite(p, "TileOffsets", 2, 0)
    with tilescope.open(p) as s, pytest.raises(CorruptDataError, match="piece 2 has no data"):
        s.scenes[0].read((512, 0, 10, 10))


def test_tile_offset_past_end_of_file(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    _overwrite(p, "TileOffsets", 3, 10**9)
    with tilescope.open(p) as s, pytest.raises(CorruptDataError, match="past the end of the file"):
        s.scenes[0].read((768, 0, 10, 10))


def test_garbage_tile_data(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    with tifffile.TiffFile(p) as tf:
        off, n = int(tf.pages[0].dataoffsets[4]), int(tf.pages[0].databytecounts[4])
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(b"\x00" * n)
    with tilescope.open(p) as s, pytest.raises(CorruptDataError, match=r"piece 4 \(jpeg"):
        s.scenes[0].read((0, 256, 10, 10))


def test_unsupported_compression(small_svs, tmp_path):
    p = _copy(small_svs, tmp_path)
    _overwrite(p, "Compression", None, 34661)  # JBIG, which no slide reader decodes
    with pytest.raises(UnsupportedFormatError, match=r"bad\.svs: level 0: TIFF compression 34661"):
        tilescope.open(p)


def test_bad_requests(small_svs):
    with tilescope.open(small_svs) as s:
        sc = s.scenes[0]
        for rect in [(0, 0, -1, 10), (0, 0, 10, 0), (0, 0, 10), (0.5, 0, 10, 10), ("a", 0, 1, 1),
                     (0, 0, float("inf"), 1)]:
            with pytest.raises(InvalidRequestError, match=r"small\.svs"):
                sc.read(rect)
        for size in [(-1, 10), (0, 0), (10,)]:
            with pytest.raises(InvalidRequestError):
                sc.read((0, 0, 10, 10), size=size)
        for kw in [dict(channels=[3]), dict(channels=["X"]), dict(z=1), dict(t=-1), dict(z=(0, 2))]:
            with pytest.raises(InvalidRequestError):
                sc.read((0, 0, 10, 10), **kw)
        with pytest.raises(InvalidRequestError):
            sc.read_level(5)


def test_too_large_raises_before_allocating(small_svs):
    with tilescope.open(small_svs) as s, pytest.raises(TooLargeError, match="max_read_bytes"):
        s.scenes[0].read((0, 0, 10**6, 10**6))
    with tilescope.open(small_svs, max_read_bytes=1000) as s:
        s.scenes[0].read((0, 0, 10, 10))
        with pytest.raises(TooLargeError):
            s.scenes[0].read((0, 0, 100, 100))


def test_unknown_option(small_svs):
    with pytest.raises(InvalidRequestError, match="unknown option"):
        tilescope.open(small_svs, fast=True)


def test_unknown_driver(small_svs):
    with pytest.raises(InvalidRequestError, match="no driver named"):
        tilescope.open(small_svs, driver="CZI9")
    with pytest.raises(UnsupportedFormatError, match="is not a SVS file"):
        tilescope.open(synth.write_tiff(small_svs + ".tiff", 300, 200), driver="SVS")


def test_closed_slide_raises(small_svs):
    s = tilescope.open(small_svs)
    sc = s.scenes[0]
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(SlideClosedError, match=r"small\.svs: slide is closed"):
        sc.read((0, 0, 10, 10))
    with pytest.raises(SlideClosedError):
        s.associated["label"]


def test_no_leaked_file_handles(small_svs, tmp_path):
    before = _open_fds()
    for _ in range(20):
        with tilescope.open(small_svs) as s:
            s.scenes[0].read((0, 0, 300, 300))
            s.associated["macro"]
    bad = tmp_path / "junk.svs"
    bad.write_bytes(b"II*\x00" + b"\xff" * 100)
    for _ in range(10):
        with pytest.raises(TilescopeError):
            tilescope.open(bad)
        tilescope.detect(bad)
    assert _open_fds() == before


def test_close_while_other_threads_read(small_svs):
    import threading

    s = tilescope.open(small_svs, cache=tilescope.TileCache(0))
    sc = s.scenes[0]
    outcomes = []

    def work():
        for i in range(200):
            try:
                sc.read((i % 700, 0, 300, 300))
            except SlideClosedError:
                outcomes.append("closed")
                return
            except Exception as e:  # pragma: no cover - any other error fails the test
                outcomes.append(e)
                return
        outcomes.append("done")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    s.close()
    for t in threads:
        t.join()
    assert all(o in ("closed", "done") for o in outcomes), outcomes


def test_piece_tables_read_at_the_first_fetch_are_checked_then(small_svs, tmp_path):
    """A plain TIFF's piece tables stay in the file until a level is first read: a table that is
    garbage by then (here overwritten after the open) fails that read with a typed error naming
    the file, and the slide's other reads go on."""
    from tilescope.source import TableRef

    bad = _copy(small_svs, tmp_path)
    with tifffile.TiffFile(bad) as tf:
        tag = tf.pages.first.tags["TileOffsets"]
        where, nbytes = tag.valueoffset, tag.count * 4
    tilescope._PARSED.clear()
    with tilescope.open(bad, cache=tilescope.TileCache(0)) as s:
        pieces = s.scenes[0].levels[0].layout.planes[0, 0][0].pieces
        assert isinstance(pieces.offsets, TableRef)
        with open(bad, "r+b") as f:
            f.seek(where)
            f.write(b"\xff" * nbytes)
        with pytest.raises(CorruptDataError, match=r"bad\.svs.*past the end of the file"):
            s.scenes[0].read((0, 0, 256, 256))
        assert s.scenes[0].read_level(1, (0, 0, 64, 64)).shape == (64, 64, 3)
