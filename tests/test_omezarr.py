"""The OME-Zarr reader against stores other writers made: ome-zarr's (NGFF 0.4 on zarr v2, 0.5 on
zarr v3) and zarr's own (a sharded v3 array), each read compared with zarr's reads, planes labelled
with their own indices."""

import os
import pickle
import shutil

import numpy as np
import pytest

import tilescope

zarr = pytest.importorskip("zarr")
ome_zarr_writer = pytest.importorskip("ome_zarr.writer")

NAMES = (("DAPI", "0000FF"), ("GFP", "00FF00"), ("RFP", "FF0000"))


def _labelled(t, c, z, h, w):
    """uint16, the high byte 100*z + 10*t + c: a wrong plane or channel cannot pass."""
    data = np.zeros((t, c, z, h, w), np.uint16)
    for ti in range(t):
        for ci in range(c):
            for zi in range(z):
                data[ti, ci, zi] = (100 * zi + 10 * ti + ci) * 256 + (np.arange(w)[None, :] + 3 * np.arange(h)[:, None]) % 256
    return data


@pytest.fixture(scope="module", params=["0.4", "0.5"])
def stack(request, tmp_path_factory):
    from ome_zarr.format import FormatV04, FormatV05

    path = str(tmp_path_factory.mktemp("omezarr") / f"stack-{request.param}.zarr")
    data = _labelled(2, 3, 2, 300, 400)
    root = zarr.open_group(path, mode="w", zarr_format=2 if request.param == "0.4" else 3)
    window = {"min": 0, "max": 65535, "start": 0, "end": 65535}
    ome_zarr_writer.write_image(
        data, root, axes="tczyx", fmt=FormatV04() if request.param == "0.4" else FormatV05(),
        storage_options={"chunks": (1, 1, 1, 128, 128)},
        scale={"t": 2.0, "z": 1.5, "y": 0.4, "x": 0.4},
        axes_units={"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
        omero={"channels": [{"label": n, "color": col, "window": window} for n, col in NAMES]})
    return path, data


def _paths(group):
    attrs = dict(group.attrs)
    return [d["path"] for d in attrs.get("ome", attrs)["multiscales"][0]["datasets"]]


def test_stores_written_by_ome_zarr_equal_zarrs_reads(stack):
    path, data = stack
    assert tilescope.detect(path) == "OMEZarr"
    group = zarr.open_group(path, mode="r")
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.channel_names == ("DAPI", "GFP", "RFP")
        assert sc.channel_colors == ("#0000FF", "#00FF00", "#FF0000")
        assert (sc.num_z_slices, sc.num_t_frames, sc.size) == (2, 2, (400, 300))
        assert sc.mpp == pytest.approx((0.4, 0.4)) and (sc.z_resolution, sc.t_resolution) == (1.5, 2.0)
        assert sc.levels[1].mpp == pytest.approx((0.8, 0.8))
        assert [lv.size for lv in sc.levels] == [(a.shape[-1], a.shape[-2]) for a in
                                                 (group[p] for p in _paths(group))]
        for k, p in enumerate(_paths(group)):
            ref = group[p][:]
            for t in range(2):
                for z in range(2):
                    np.testing.assert_array_equal(sc.read_level(k, z=z, t=t), np.moveaxis(ref[t, :, z], 0, -1))
        for t in range(2):  # the planes are the labelled ones, not only equal to zarr's
            for z in range(2):
                got = sc.read_level(0, z=z, t=t)
                assert all(np.all(got[..., c] // 256 == 100 * z + 10 * t + c) for c in range(3))
        np.testing.assert_array_equal(sc.read((50, 60, 200, 100), channels=["GFP"], z=1, t=1)[..., 0],
                                      data[1, 1, 1, 60:160, 50:250])


def test_scales_give_mpp_z_and_t_steps(tmp_path):
    path = str(tmp_path / "units.zarr")
    root = zarr.open_group(path, mode="w", zarr_format=3)
    a = root.create_array("0", shape=(2, 3, 64, 80), chunks=(1, 1, 32, 32), dtype=np.uint8, fill_value=0)
    a[:] = 7
    root.attrs.update({"ome": {"version": "0.5", "multiscales": [{"name": "u", "axes": [
        {"name": "t", "type": "time", "unit": "millisecond"}, {"name": "z", "type": "space", "unit": "micrometer"},
        {"name": "y", "type": "space", "unit": "nanometer"}, {"name": "x", "type": "space", "unit": "nanometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [500, 2.0, 250, 250]}]}]}]}})
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.mpp == pytest.approx((0.25, 0.25)) and sc.z_resolution == 2.0 and sc.t_resolution == 0.5
        assert sc.channel_names == ("C0",) and (sc.num_z_slices, sc.num_t_frames) == (3, 2)
        assert np.all(sc.read_level(0, z=2, t=1) == 7)


def test_sharded_v3_and_missing_chunks(tmp_path):
    path = str(tmp_path / "sharded.zarr")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (3, 700, 900), np.uint8)
    g = zarr.open_group(path, mode="w", zarr_format=3)
    arr = g.create_array("0", shape=a.shape, chunks=(3, 128, 128), shards=(3, 256, 512), dtype=np.uint8,
                         fill_value=0)
    arr[:] = a
    arr[:, 256:512, 0:512] = 0  # a whole shard of fill: zarr leaves it out
    a[:, 256:512, 0:512] = 0
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [{"name": "sh", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.25, 0.25]}]}]}]}})
    with tilescope.open(path) as s:
        sc = s.scenes[0]
        assert sc.levels[0].tile_size == (128, 128) and sc.mpp == (0.25, 0.25)
        np.testing.assert_array_equal(sc.read_level(0), np.moveaxis(a, 0, -1))
        back = pickle.loads(pickle.dumps(s))
        np.testing.assert_array_equal(back.scenes[0].read_level(0, (100, 200, 300, 300)),
                                      np.moveaxis(a, 0, -1)[200:500, 100:400])


def test_our_writer_round_trip(tmp_path, labelled):
    from tilescope.writer import write

    with tilescope.open(labelled["ome"]) as s:
        sc = s.scenes[0]
        out = write(s, tmp_path / "w.ome.zarr", tile_size=128)
        with tilescope.open(out) as back:
            bs = back.scenes[0]
            assert bs.channel_names == sc.channel_names and bs.z_resolution == sc.z_resolution
            for t in range(sc.num_t_frames):
                for z in range(sc.num_z_slices):
                    np.testing.assert_array_equal(bs.read_level(0, z=z, t=t), sc.read_level(0, z=z, t=t))


def test_damaged_stores_are_typed_errors(stack, tmp_path):
    path, _ = stack
    bad = str(tmp_path / "bad.zarr")
    shutil.copytree(path, bad)
    meta = os.path.join(bad, "zarr.json" if os.path.exists(os.path.join(bad, "zarr.json")) else ".zattrs")
    with open(meta, "w") as f:
        f.write('{"attributes": {"ome": {"multiscales": [{"axes": ["y"], "datasets": []}]}}, "multiscales": 1')
    with pytest.raises(tilescope.TilescopeError, match=r"bad\.zarr"):
        tilescope.open(bad)
    chunky = str(tmp_path / "chunky.zarr")
    shutil.copytree(path, chunky)
    level0 = os.path.join(chunky, _paths(zarr.open_group(path, mode="r"))[0])
    victim = next(os.path.join(d, f) for d, _, fs in sorted(os.walk(level0)) for f in sorted(fs)
                  if not f.startswith((".", "zarr")))
    with open(victim, "r+b") as f:
        f.truncate(10)
    with tilescope.open(chunky) as s, pytest.raises(tilescope.CorruptDataError, match=r"chunky\.zarr"):
        s.scenes[0].read_level(0)


@pytest.fixture(scope="module")
def stores(stack, tmp_path_factory):
    """Under one folder: an ome-zarr-written stack (v2 or v3, from ``stack``) and a sharded v3
    store with chunks of fill left out (zarr's writer)."""
    path, _ = stack
    root = tmp_path_factory.mktemp("www-zarr")
    shutil.copytree(path, root / "stack.zarr")
    a = np.random.default_rng(1).integers(0, 255, (3, 300, 400), np.uint8)
    a[:, :128, :128] = 0
    g = zarr.open_group(str(root / "sharded.zarr"), mode="w", zarr_format=3)
    arr = g.create_array("0", shape=a.shape, chunks=(3, 64, 64), shards=(3, 128, 128), dtype=np.uint8, fill_value=0)
    arr[:] = a
    g.attrs.update({"ome": {"version": "0.5", "multiscales": [{"name": "sh", "axes": [
        {"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]}})
    return root


def _same_store(remote, local):
    rs, ls = remote.scenes[0], local.scenes[0]
    assert (rs.size, rs.levels, rs.channel_names, rs.num_z_slices, rs.num_t_frames) == \
        (ls.size, ls.levels, ls.channel_names, ls.num_z_slices, ls.num_t_frames)
    for k in range(len(ls.levels)):
        for t in range(ls.num_t_frames):
            for z in range(ls.num_z_slices):
                np.testing.assert_array_equal(rs.read_level(k, z=z, t=t), ls.read_level(k, z=z, t=t))


@pytest.mark.parametrize("name", ["stack.zarr", "sharded.zarr"])
def test_over_http_equal_to_local(stores, name):
    from tools import servers

    if servers.nginx_binary() is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("nginx is not installed")
    with servers.nginx(str(stores)) as url:
        assert tilescope.detect(f"{url}/{name}") == "OMEZarr"
        for given in (f"{url}/{name}", f"{url}/{name}/"):
            with tilescope.open(given) as r, tilescope.open(str(stores / name)) as loc:
                _same_store(r, loc)
        with pytest.raises(tilescope.SourceNotFoundError):
            tilescope.open(f"{url}/nothing.zarr")


def test_in_an_s3_bucket(stores):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from tools import servers

    with servers.s3_server() as endpoint:
        client = servers.s3_client(endpoint)
        client.create_bucket(Bucket="stores")
        for d, _, files in os.walk(stores / "sharded.zarr"):
            for f in files:
                full = os.path.join(d, f)
                client.upload_file(full, "stores", "sharded.zarr/" + os.path.relpath(full, stores / "sharded.zarr"))
        opts = servers.s3_options(endpoint)
        with tilescope.open("s3://stores/sharded.zarr", storage_options=opts) as r, \
                tilescope.open(str(stores / "sharded.zarr")) as loc:
            _same_store(r, loc)
            back = pickle.loads(pickle.dumps(r))
            np.testing.assert_array_equal(back.scenes[0].read_level(0), loc.scenes[0].read_level(0))
