"""Processes: slides read before fork read in the child (fork, forkserver, spawn); every object a
user holds pickles as what to open and reads the same on the other side; a changed or missing
file is a typed error on first use, never at unpickling. On the ``labelled`` fixtures (conftest:
SVS, OME-TIFF by tifffile, CZI mosaic by pylibCZIrw, DICOM by wsidicomizer)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import shutil
import threading

import numpy as np
import pytest

import tilescope
from tilescope.units import Scale

RECT = (300, 200, 500, 400)


KINDS = ("svs", "ome", "czi", "dicom")


# -- fork, forkserver, spawn --------------------------------------------------------------------
def _child_read(slide, rect, queue) -> None:
    with slide:
        queue.put((slide.scenes[0].read(rect), slide.options.threads))


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_slide_read_before_starting_a_process_reads_in_it(labelled, method):
    ctx = mp.get_context(method)
    with tilescope.open(labelled["svs"], threads=2) as slide:
        want = slide.scenes[0].read(RECT)  # the decode pool runs in the parent now
        q = ctx.Queue()
        p = ctx.Process(target=_child_read, args=(slide, RECT, q))  # fork inherits it; the others pickle
        p.start()
        got, threads = q.get(timeout=60)
        p.join(30)
    assert p.exitcode == 0
    np.testing.assert_array_equal(got, want)
    assert threads == 2  # the parent's setting, not the default


def test_fork_while_other_threads_read(labelled):
    """Forks taken while two threads read (locks, the pool and the cache mid-update) read right."""
    ctx = mp.get_context("fork")
    rng = np.random.default_rng(0)
    with tilescope.open(labelled["svs"], cache=tilescope.TileCache(2 << 20)) as slide:
        sc = slide.scenes[0]
        want = sc.read(RECT)
        stop = threading.Event()

        def busy() -> None:
            while not stop.is_set():
                x, y = (int(v) for v in rng.integers(0, 2000, 2))
                sc.read((x, y, 700, 500))

        readers = [threading.Thread(target=busy) for _ in range(2)]
        for r in readers:
            r.start()
        try:
            for _ in range(6):
                q = ctx.Queue()
                p = ctx.Process(target=_child_read, args=(slide, RECT, q))
                p.start()
                got, _ = q.get(timeout=30)
                p.join(30)
                assert p.exitcode == 0
                np.testing.assert_array_equal(got, want)
        finally:
            stop.set()
            for r in readers:
                r.join()


# -- pickling -----------------------------------------------------------------------------------
def _round(obj):
    data = pickle.dumps(obj)
    assert len(data) < 16 << 10, f"{type(obj).__name__} pickles to {len(data)} bytes"  # no pixels
    return pickle.loads(data)


@pytest.mark.parametrize("kind", KINDS)
def test_every_object_pickles_as_what_to_open(labelled, kind):
    with tilescope.open(labelled[kind], threads=2) as slide:
        sc = slide.scenes[-1]
        last = len(sc.levels) - 1
        view = sc.view(last)
        tiles = sc.tiles(128, 8, scale=Scale(level=last))
        want = {"slide": slide.scenes[-1].read_level(last), "view": view[:100, :120],
                "tile": tiles[1].array, "small": slide.scenes[0].read(size=(200, 0))}
        s2, sc2, view2, tiles2 = (_round(o) for o in (slide, sc, view, tiles))
        assert s2.options.threads == 2 and s2.driver == slide.driver
        np.testing.assert_array_equal(s2.scenes[-1].read_level(last), want["slide"])
        np.testing.assert_array_equal(sc2.read_level(last), want["slide"])
        assert sc2.name == sc.name and sc2.channel_names == sc.channel_names and sc2.mpp == sc.mpp
        np.testing.assert_array_equal(view2[:100, :120], want["view"])
        assert len(tiles2) == len(tiles)
        np.testing.assert_array_equal(tiles2[1].array, want["tile"])
        np.testing.assert_array_equal(s2.scenes[0].read(size=(200, 0)), want["small"])
        assert list(s2.associated) == list(slide.associated)
        # what was unpickled and used pickles again
        np.testing.assert_array_equal(_round(sc2).read_level(last), want["slide"])
        np.testing.assert_array_equal(_round(s2).scenes[-1].read_level(last), want["slide"])
        s2.close()


def test_unpickling_touches_no_file_and_a_changed_file_is_a_typed_error(labelled, tmp_path):
    path = str(tmp_path / "copy.svs")
    shutil.copy(labelled["svs"], path)
    with tilescope.open(path) as slide:
        data, scene_data = pickle.dumps(slide), pickle.dumps(slide.scenes[0])
    os.rename(path, path + ".away")
    gone, gone_scene = pickle.loads(data), pickle.loads(scene_data)  # no file needed here
    with pytest.raises(tilescope.SourceNotFoundError, match=r"copy\.svs"):
        gone.scenes  # noqa: B018  (first use opens)
    with pytest.raises(tilescope.SourceNotFoundError, match=r"copy\.svs"):
        gone_scene.read((0, 0, 10, 10))
    os.rename(path + ".away", path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(tilescope.SourceChangedError, match=r"copy\.svs.*changed"):
        pickle.loads(data).scenes[0].read((0, 0, 10, 10))


def test_only_opened_slides_pickle(labelled):
    from tilescope.engine import Options
    from tilescope.model import Slide

    made = Slide(tilescope.FileSource(labelled["svs"]), "SVS", Options())  # not by tilescope.open
    with pytest.raises(TypeError, match=r"main\.svs: only a slide from tilescope\.open pickles"):
        pickle.dumps(made)
    made.close()


def test_caches_pickle_as_their_settings():
    from tilescope.cache import DEFAULT_CACHE

    cache = tilescope.TileCache(3 << 20, floor_bytes=1 << 19)
    cache.put(("k",), np.zeros(1000, np.uint8))
    assert cache.nbytes
    c2 = pickle.loads(pickle.dumps(cache))
    assert (c2.capacity, c2.floor, c2.nbytes) == (3 << 20, 1 << 19, 0)
    assert pickle.loads(pickle.dumps(DEFAULT_CACHE)) is DEFAULT_CACHE
