"""Layers for parallel Python: Dask arrays, xarray, the zarr v3 store (NGFF checked by
ome-zarr-models), jobs on a real dask.distributed LocalCluster (two worker processes on 127.0.0.1,
one killed mid-job) and ``tilescope tiles``; every path equal to ``read_level``. On the
``labelled`` fixtures (conftest: SVS, OME-TIFF by tifffile, CZI mosaic by pylibCZIrw, DICOM by
wsidicomizer), whose planes carry their own indices."""

from __future__ import annotations

import csv
import functools
import os
import pickle

import numpy as np
import pytest

import tilescope
from tilescope import jobs
from tilescope.cli import main

da = pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")
distributed = pytest.importorskip("distributed")

KINDS = ("svs", "ome", "czi", "dicom")


def _label(a: np.ndarray) -> np.ndarray:
    return a // 256


# -- Dask ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_to_dask_equals_read_level_on_every_level(labelled, kind):
    with tilescope.open(labelled[kind]) as slide:
        for sc in slide.scenes:
            for li, lv in enumerate(sc.levels):
                arr = sc.to_dask(li)
                w, h = lv.size
                assert arr.shape == (h, w, sc.image_channels) and arr.dtype == sc.dtype
                np.testing.assert_array_equal(arr.compute(scheduler="threads"), sc.read_level(li))
        small = sc.to_dask(0, chunks=(100, 150))  # chunks that cut across stored tiles
        assert small.chunks[0][0] == 100 and small.chunks[1][0] == 150
        np.testing.assert_array_equal(small[50:380, 70:333].compute(), sc.read_level(0, (70, 50, 263, 330)))


def test_to_dask_planes_and_channels_by_their_labels(labelled):
    """Ranges of t and z give leading axes (t, z, y, x, c) as Scene.read does; every plane holds
    its own label, so a wrong plane or channel cannot pass."""
    for kind, (nt, nz, nc) in (("ome", (2, 3, 3)), ("czi", (2, 2, 2))):
        with tilescope.open(labelled[kind]) as slide:
            sc = slide.scenes[0]
            arr = sc.to_dask(0, channels=[nc - 1, 0], z=(0, nz), t=(0, nt), chunks=256)
            assert arr.shape == (nt, nz, *sc.levels[0].size[::-1], 2)
            got = arr.compute()
            np.testing.assert_array_equal(got, sc.read_level(0, channels=[nc - 1, 0], z=(0, nz), t=(0, nt)))
            for t in range(nt):
                for z in range(nz):
                    for i, c in enumerate((nc - 1, 0)):
                        labels = np.unique(_label(got[t, z, :150, :150, i]))
                        assert list(labels) == [100 * z + 10 * t + c], (kind, t, z, c, labels)
            one = sc.to_dask(0, z=1, t=1, channels=[1]).compute()
            assert one.ndim == 3 and set(np.unique(_label(one[:150, :150]))) == {110 + 1}


def test_default_chunks_are_the_stored_tiles_grown_to_a_megabyte(labelled):
    with tilescope.open(labelled["svs"]) as slide:
        sc = slide.scenes[0]
        tw, th = sc.levels[0].tile_size
        arr = sc.to_dask(0)
        ch, cw = arr.chunks[0][0], arr.chunks[1][0]
        assert ch % th == 0 and cw % tw == 0 and ch * cw * 3 >= 1 << 20
        assert arr.chunks[2] == (3,)


def test_the_graph_pickles_small_and_computes_in_another_process(labelled):
    import cloudpickle

    with tilescope.open(labelled["ome"]) as slide:
        arr = slide.scenes[0].to_dask(0, z=(0, 3))
        want = slide.scenes[0].read_level(0, z=(0, 3))
    data = cloudpickle.dumps(arr)
    assert len(data) < 64 << 10, len(data)  # no pixels in it, the scene once
    np.testing.assert_array_equal(pickle.loads(data).compute(scheduler="processes", num_workers=2), want)
    again = tilescope.open(labelled["ome"]).scenes[0].to_dask(0, z=(0, 3))
    assert again.name == arr.name  # same file, same selection: same keys (dask reuses results)


def test_bad_chunks_are_a_typed_error(labelled):
    with tilescope.open(labelled["svs"]) as slide, pytest.raises(tilescope.InvalidRequestError, match="chunks"):
        slide.scenes[0].to_dask(0, chunks=((1, 2), (3,), (3,)))


# -- xarray -------------------------------------------------------------------------------------
def test_to_xarray_names_dims_coords_and_units(labelled):
    pytest.importorskip("xarray")
    with tilescope.open(labelled["ome"]) as slide:
        sc = slide.scenes[0]
        x = sc.to_xarray(1, z=(0, 3), t=(0, 2))
        assert x.dims == ("t", "z", "y", "x", "c")
        assert list(x.coords["c"].values) == ["DAPI", "FITC", "TRITC"]
        mpp = sc.levels[1].mpp
        assert mpp[0] == pytest.approx(1.0)  # 0.5 µm at level 0, halved
        np.testing.assert_allclose(x.coords["x"].values[:3], (np.arange(3) + 0.5) * mpp[0])
        np.testing.assert_allclose(x.coords["z"].values, [0.0, 2.0, 4.0])
        np.testing.assert_allclose(x.coords["t"].values, [0.0, 3.0])
        assert x.attrs["level"] == 1 and x.attrs["downsample"] == pytest.approx(2.0)
        assert x.attrs["source"] == slide.path
        np.testing.assert_array_equal(x.sel(c="TRITC").isel(t=1, z=2).values,
                                      sc.read_level(1, channels=[2], z=2, t=1)[..., 0])


# -- zarr ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_zarr_store_is_the_pyramid_and_valid_ngff(labelled, kind):
    from ome_zarr_models.v05.image import Image

    with tilescope.open(labelled[kind]) as slide:
        sc = slide.scenes[0]
        store = slide.zarr_store()
        group = zarr.open_group(store, mode="r")
        Image.from_zarr(group)  # NGFF 0.5 multiscales, validated by ome-zarr-models
        ms = group.attrs["ome"]["multiscales"][0]
        axes = [a["name"] for a in ms["axes"]]
        assert axes[-2:] == ["y", "x"] and "c" in axes
        assert [d["path"] for d in ms["datasets"]] == [str(i) for i in range(len(sc.levels))]
        assert [c["label"] for c in group.attrs["ome"]["omero"]["channels"]] == \
            list(sc.channel_names[:sc.image_channels])
        for li, lv in enumerate(sc.levels):
            a = group[str(li)]
            assert a.chunks[-2:] == tuple(min(t, s) for t, s in zip(lv.tile_size[::-1], lv.size[::-1],
                                                                     strict=True))
            got = a[...]
            want = sc.read_level(li, z=(0, sc.num_z_slices), t=(0, sc.num_t_frames))  # t, z, y, x, c
            want = want.reshape(sc.num_t_frames, sc.num_z_slices, *want.shape[-3:])
            want = np.moveaxis(want, -1, 1)  # t, c, z, y, x
            np.testing.assert_array_equal(got, want.reshape(got.shape))
        np.testing.assert_array_equal(da.from_zarr(store, component="0").compute(), group["0"][...])
        back = pickle.loads(pickle.dumps(store))
        np.testing.assert_array_equal(zarr.open_group(back, mode="r")["0"][...], group["0"][...])


def test_zarr_store_missing_tiles_read_as_background(labelled):
    """The CZI mosaic's missing quarter: fill, not KeyError, at every plane."""
    with tilescope.open(labelled["czi"]) as slide:
        sc = slide.scenes[0]
        a = zarr.open_group(sc.zarr_store(), mode="r")["0"]
        w, h = sc.levels[0].size
        quarter = a[..., h - 50:, w - 50:]
        assert quarter.size and np.all(quarter == sc.background)
        assert a.shape[:3] == (2, 2, 2)  # t, c, z


def test_zarr_store_is_read_only(labelled):
    with tilescope.open(labelled["svs"]) as slide:
        with pytest.raises(ValueError, match="read-only"):  # zarr's own check
            zarr.open_group(slide.zarr_store(), mode="r")["0"][0:10, 0:10] = 0
        with pytest.raises(ValueError, match="read-only"):
            zarr.open_group(slide.zarr_store(), mode="a")


# -- jobs on dask.distributed -------------------------------------------------------------------
def mean_colour(array: np.ndarray, tile) -> dict:
    return {"mean": array.reshape(-1, array.shape[-1]).mean(0).round(6).tolist(), "shape": array.shape}


def dies_once(marker: str, array: np.ndarray, tile) -> dict:
    """Kills its worker process the first time it meets tile (1, 1): Dask must re-run the batch."""
    if (tile.col, tile.row) == (1, 1) and not os.path.exists(marker):
        with open(marker, "w"):
            pass
        os._exit(1)
    return mean_colour(array, tile)


def fails(array: np.ndarray, tile) -> float:
    if (tile.col, tile.row) == (2, 1):
        raise ValueError("no good")
    return 0.0


def _serial(paths, tile_size, **kw):
    rows = []
    for p in paths:
        with tilescope.open(p) as slide:
            sc = slide.scenes[0]
            for tile in sc.tiles(tile_size, **kw):
                rows.append(jobs.record(sc, tile, mean_colour(tile.array, tile)))
    return rows


@pytest.fixture(scope="module")
def client():
    with jobs.local_client(2) as c:
        yield c


def test_map_tiles_on_two_worker_processes_equals_a_serial_run(labelled, client):
    assert len(client.scheduler_info()["workers"]) == 2
    paths = [labelled["svs"], labelled["dicom"]]
    df = jobs.map_tiles(mean_colour, paths, tile_size=300, overlap=10, client=client, batch=5)
    want = _serial(paths, 300, overlap=10)
    assert df.to_dict("records") == want
    assert list(df.columns[:10]) == list(jobs.COLUMNS)
    at = jobs.map_tiles(mean_colour, [labelled["svs"]], tile_size=128, mpp=4 * slide_mpp(labelled["svs"]),
                        client=client)
    assert (at["level"] > 0).all() and len(at) == len(_serial([labelled["svs"]], 128,
                                                                 mpp=4 * slide_mpp(labelled["svs"])))


def slide_mpp(path: str) -> float:
    with tilescope.open(path) as s:
        return s.scenes[0].mpp[0]


def _path(path: str) -> str:  # what tilescope names the slide (a DICOM folder: its first instance)
    with tilescope.open(path) as s:
        return s.path


def test_a_worker_killed_mid_job_is_retried_and_the_result_complete(labelled, client, tmp_path):
    marker = str(tmp_path / "killed")
    df = jobs.map_tiles(functools.partial(dies_once, marker), [labelled["svs"]], tile_size=400,
                        client=client, batch=3)
    assert os.path.exists(marker)  # a worker did die
    assert df.to_dict("records") == _serial([labelled["svs"]], 400)


def test_a_failing_function_names_the_slide_and_tile(labelled, client):
    with pytest.raises(jobs.JobError, match=r"main\.svs.*tile \(col 2, row 1\).*ValueError: no good"):
        jobs.map_tiles(fails, [labelled["svs"]], tile_size=400, client=client)


def test_map_tiles_starts_its_own_local_cluster_when_given_none(labelled):
    df = jobs.map_tiles(mean_colour, [labelled["ome"]], tile_size=512, tissue=None)
    assert df.to_dict("records") == _serial([labelled["ome"]], 512)


# -- tilescope tiles ----------------------------------------------------------------------------
def _manifest(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiles_command_exports_resumes_and_refuses_other_settings(labelled, client, tmp_path, capsys):
    from PIL import Image

    out = str(tmp_path / "patches")
    slides = [labelled["svs"], labelled["dicom"]]
    addr = client.scheduler.address
    assert main(["tiles", *slides, "--out", out, "--size", "256", "--overlap", "8", "--scheduler", addr]) == 0
    rows = _manifest(os.path.join(out, "manifest.csv"))
    assert {r["slide"] for r in rows} == {_path(s) for s in slides}
    with tilescope.open(labelled["svs"]) as slide:
        tiles = slide.scenes[0].tiles(256, 8, edges="pad")
        assert len([r for r in rows if r["slide"].endswith("main.svs")]) == len(tiles)
        for tile in (tiles[0], tiles[len(tiles) - 1]):  # an edge tile is padded to full size
            png = np.asarray(Image.open(os.path.join(out, "main", f"c{tile.col}_r{tile.row}.png")))
            assert png.shape == (272, 272, 3)
            np.testing.assert_array_equal(png, tile.array)
    # resumable: a complete slide is skipped, an incomplete one (no manifest) redone
    os.remove(os.path.join(out, "dcm", "manifest.csv"))
    before = os.stat(os.path.join(out, "main", "c0_r0.png")).st_mtime_ns
    assert main(["tiles", *slides, "--out", out, "--size", "256", "--overlap", "8", "--scheduler", addr]) == 0
    assert "1 slide(s) exported" in capsys.readouterr().out
    assert os.stat(os.path.join(out, "main", "c0_r0.png")).st_mtime_ns == before
    assert _manifest(os.path.join(out, "manifest.csv")) == rows
    assert main(["tiles", *slides, "--out", out, "--size", "128"]) == 1
    assert "other settings" in capsys.readouterr().err


def test_tiles_command_writes_zarr_and_npy_at_a_resolution(labelled, client, tmp_path):
    addr = client.scheduler.address
    mpp = 2 * slide_mpp(labelled["svs"])
    out = str(tmp_path / "z")
    assert main(["tiles", labelled["svs"], "--out", out, "--size", "200", "--mpp", str(mpp),
                 "--format", "zarr", "--scheduler", addr]) == 0
    a = zarr.open_array(os.path.join(out, "main", "tiles.zarr"), mode="r")
    with tilescope.open(labelled["svs"]) as slide:
        tiles = slide.scenes[0].tiles(200, mpp=mpp, edges="pad")
        assert a.shape == (*tiles.grid[::-1], 200, 200, 3)
        for tile in tiles[:3]:
            np.testing.assert_array_equal(a[tile.row, tile.col], tile.array)
    out = str(tmp_path / "n")
    assert main(["tiles", labelled["ome"], "--out", out, "--size", "300", "--format", "npy",
                 "--scheduler", addr]) == 0
    with tilescope.open(labelled["ome"]) as slide:
        tile = slide.scenes[0].tiles(300, edges="pad")[1]
        np.testing.assert_array_equal(np.load(os.path.join(out, "labelled", f"c{tile.col}_r{tile.row}.npy")),
                                      tile.array)


def test_tiles_command_refuses_what_png_cannot_hold(labelled, tmp_path, capsys):
    assert main(["tiles", labelled["ome"], "--out", str(tmp_path / "p"), "--format", "png"]) == 1
    assert "PNG takes" in capsys.readouterr().err
