"""The plain IFD reader (tilescope.formats.ifd) against tifffile: every attribute the TIFF drivers
use, on files tifffile wrote; files with tifffile's special cases go to tifffile; a slide opened
through either reading is the same slide."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import tilescope
from tilescope.formats import ifd
from tilescope.source import FileSource
from tools import synth

ATTRS = ("imagewidth", "imagelength", "tilewidth", "tilelength", "is_tiled", "rowsperstrip",
         "samplesperpixel", "planarconfig", "compression", "photometric", "predictor", "bitspersample",
         "sampleformat", "dtype", "jpegtables", "extrasamples", "imagedepth", "description", "software",
         "subfiletype", "subifds", "resolutionunit")
TAGS = (270, 305, 306, 271, 272, 315, 33432, 316, 269, 282, 283, 296, 34675, 700)


def _plain(path):
    """(the plain first page or None, every page or None); values read on demand from a source
    left open (closed with the test's garbage)."""
    src = FileSource(path)
    pages = ifd.read(src, src.head(64))
    return pages, (ifd.all_pages(pages) if pages is not None else None)


def _same_page(mine, theirs):
    for a in ATTRS:
        assert getattr(mine, a) == getattr(theirs, a), a
        assert type(getattr(mine, a)) is type(getattr(theirs, a)), a  # enums where tifffile has them
    assert mine.get_resolution() == theirs.get_resolution()
    assert np.array_equal(mine.dataoffsets, theirs.dataoffsets)
    assert np.array_equal(mine.databytecounts, theirs.databytecounts)
    for code in TAGS:
        t = theirs.tags.get(code)
        assert (code in mine.tags) == (t is not None), code
        if t is not None:
            m = mine.tags[code]
            assert (m.value, m.dtype, m.count, m.valueoffset) == (t.value, t.dtype, t.count, t.valueoffset), code


def _written(tmp_path):
    """Files of tifffile's writing that exercise the decoding: byte orders, BigTIFF, types,
    strips, extra samples, text and resolution tags, SubIFDs."""
    rng = np.random.default_rng(5)
    out = {}

    def w(name, data, **kw):
        out[name] = p = str(tmp_path / name)
        tifffile.imwrite(p, data, **kw)

    w("be-u16.tif", rng.integers(0, 60000, (300, 200), np.uint16), byteorder=">", tile=(64, 64),
      compression="zlib")
    w("be-big-f32.tif", rng.random((200, 300), np.float32), byteorder=">", bigtiff=True, tile=(64, 64),
      predictor=True, compression="zlib")
    w("i16-strips.tif", rng.integers(-3000, 3000, (333, 111), np.int16), rowsperstrip=50)
    w("rgba.tif", rng.integers(0, 255, (100, 120, 4), np.uint8), photometric="rgb", extrasamples=[2],
      tile=(32, 32), description="first\0second", software="tests", resolution=(12.5, 25, "CENTIMETER"),
      metadata=None, datetime="2026:12:03 12:00:00",
      extratags=[(34675, 7, 5, b"\x01\x02\x03\x04\x05", True), (271, 2, 0, "ünï".encode(), True),
                 (272, 2, 0, b"caf\xe9 ", True)])
    w("planar.tif", rng.integers(0, 255, (3, 90, 70), np.uint8), photometric="rgb", planarconfig="separate",
      rowsperstrip=16, metadata=None)
    w("one-strip.tif", rng.integers(0, 255, (40, 30), np.uint8), metadata=None)
    p = str(tmp_path / "subifds.tif")
    with tifffile.TiffWriter(p) as tw:
        tw.write(rng.integers(0, 255, (256, 256, 3), np.uint8), tile=(64, 64), subifds=2, photometric="rgb")
        tw.write(rng.integers(0, 255, (128, 128, 3), np.uint8), tile=(64, 64), subfiletype=1, photometric="rgb")
        tw.write(rng.integers(0, 255, (64, 64, 3), np.uint8), tile=(32, 32), subfiletype=1, photometric="rgb")
        tw.write(rng.integers(0, 255, (50, 50, 3), np.uint8), photometric="rgb")
    out["subifds.tif"] = p
    return out


@pytest.fixture(scope="module")
def tiff_files(tmp_path_factory, svs, svs_variants, tiffs, ome, ome8, svs_exact):
    files = {"main.svs": svs, "exact.svs": svs_exact, "multi.ome.tiff": ome, "u8.ome.tiff": ome8,
             **{f"svs-{k}": v for k, v in svs_variants.items()}, **tiffs}
    return {**files, **_written(tmp_path_factory.mktemp("ifd"))}


def test_plain_pages_equal_tifffiles(tiff_files):
    for name, path in tiff_files.items():
        first, pages = _plain(path)
        assert first is not None and pages is not None, name
        with tifffile.TiffFile(path) as tf:
            theirs = list(tf.pages)
            assert len(pages) == len(theirs), name
            for mine, page in zip(pages, theirs, strict=True):
                _same_page(mine, page)
                assert len(mine.pages) == len(page.pages or ()), name
                for m, t in zip(mine.pages, page.pages or (), strict=True):
                    _same_page(m, t)


@pytest.mark.parametrize("kind", ["volumetric", "ndpi tag", "12 bits", "ojpeg", "bits differ", "no tiles"])
def test_special_files_go_to_tifffile(tmp_path, kind):
    p = str(tmp_path / "x.tif")
    data = np.zeros((64, 64), np.uint8)
    if kind == "volumetric":
        tifffile.imwrite(p, np.zeros((16, 64, 64), np.uint8), volumetric=True, tile=(16, 16, 16))
    elif kind == "ndpi tag":
        tifffile.imwrite(p, data, extratags=[(65420, 4, 1, 1, True)])
    elif kind == "12 bits":
        tifffile.imwrite(p, np.zeros((64, 64), np.uint16), bitspersample=12)
    elif kind == "ojpeg":
        tifffile.imwrite(p, data)
        _patch_tag(p, 259, 6)
    elif kind == "bits differ":
        tifffile.imwrite(p, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
        with tifffile.TiffFile(p) as tf:
            off = tf.pages.first.tags[258].valueoffset
        with open(p, "r+b") as f:
            f.seek(off + 2)
            f.write((16).to_bytes(2, "little"))
    else:  # a TileWidth without a TileLength
        tifffile.imwrite(p, data, tile=(16, 16))
        _patch_tag(p, 323, 999, code_to=999)
    assert _plain(p)[0] is None, kind


def _patch_tag(path, code, value, code_to=None):
    """Rewrite a classic little-endian file's SHORT tag value (or its code) in place."""
    with tifffile.TiffFile(path) as tf:
        tag = tf.pages.first.tags[code]
    with open(path, "r+b") as f:
        if code_to is not None:
            f.seek(tag.offset)
            f.write(code_to.to_bytes(2, "little"))
        else:
            f.seek(tag.valueoffset)
            f.write(value.to_bytes(2, "little"))


def test_a_chain_past_max_pages_is_refused_and_a_loop_ends_it(tmp_path, monkeypatch):
    p = str(tmp_path / "many.tif")
    with tifffile.TiffWriter(p) as tw:
        for _ in range(5):
            tw.write(np.zeros((8, 8), np.uint8))
    monkeypatch.setattr(ifd, "MAX_PAGES", 3)
    src = FileSource(p)
    pages = ifd.read(src, src.head(64))
    with pytest.raises(tilescope.TooLargeError, match="more than 3 TIFF pages"):
        ifd.all_pages(pages)
    src.close()
    monkeypatch.setattr(ifd, "MAX_PAGES", 1 << 16)
    with tifffile.TiffFile(p) as tf:  # the last page links back to the second
        last = tf.pages[4]
        link = last.offset + 2 + len(last.tags) * 12
        second = tf.pages[1].offset
    with open(p, "r+b") as f:
        f.seek(link)
        f.write(second.to_bytes(4, "little"))
    assert len(_plain(p)[1]) == 5


def _slide_facts(path):
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        facts = [s.driver, s.properties, s.metadata, sorted(s.associated), sc.size, sc.mpp, sc.magnification,
                 sc.dtype, sc.channel_names, sc.compression, sc.compression_raw,
                 [(lv.size, lv.tile_size, lv.downsample) for lv in sc.levels]]
        pixels = [sc.read_level(len(sc.levels) - 1), sc.read((0, 0, min(300, sc.size[0]), min(200, sc.size[1])))]
        pixels += [s.associated[k] for k in sorted(s.associated)]
    return facts, pixels


def test_a_slide_read_either_way_is_the_same(tiff_files, monkeypatch):
    for name in ("main.svs", "exact.svs", "svs-jpeg-rgb", "svs-bigtiff", "jpeg-subifds", "zstd-planar",
                 "stripped", "classic-lzw", "subifds.tif", "be-big-f32.tif", "planar.tif"):
        tilescope._PARSED.clear()
        plain = _slide_facts(tiff_files[name])
        tilescope._PARSED.clear()
        with monkeypatch.context() as m:
            m.setattr(ifd, "read", lambda source, head: None)
            via_tifffile = _slide_facts(tiff_files[name])
        tilescope._PARSED.clear()
        assert plain[0] == via_tifffile[0], name
        for a, b in zip(plain[1], via_tifffile[1], strict=True):
            assert np.array_equal(a, b), name


@pytest.fixture(scope="module")
def dialects(tmp_path_factory):
    d = tmp_path_factory.mktemp("dialects")
    return {"philips": str(synth.write_philips(d / "p.tiff", 1200, 900)),
            "qptiff": str(synth.write_qptiff(d / "q.qptiff", 1200, 900)),
            "scn": str(synth.write_scn(d / "s.scn")), "bif": str(synth.write_bif(d / "v.bif")),
            "ndpi": str(synth.write_ndpi(d / "n.ndpi", 1024, 768, downsamples=(1, 4)))}


def test_dialects_read_either_way_are_the_same(dialects, monkeypatch):
    """Dialects detected from the plain first page, and read from plain pages where theirs are
    plain (Philips, QPTIFF, SCN, Ventana; NDPI's tags take tifffile's path)."""
    assert _plain(dialects["ndpi"])[0] is None
    for name in ("philips", "qptiff", "scn", "bif"):
        assert _plain(dialects[name])[1] is not None, name
    for name, path in dialects.items():
        tilescope._PARSED.clear()
        plain = _slide_facts(path)
        tilescope._PARSED.clear()
        with monkeypatch.context() as m:
            m.setattr(ifd, "read", lambda source, head: None)
            via_tifffile = _slide_facts(path)
        tilescope._PARSED.clear()
        assert plain[0] == via_tifffile[0], name
        for a, b in zip(plain[1], via_tifffile[1], strict=True):
            assert np.array_equal(a, b), name
