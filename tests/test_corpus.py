"""The corruption corpus (fuzz/corpus.py): every damage fails with its named typed error naming the
file, or still reads where a reader can survive it; and every minimized fuzzer finding in
fuzz/regressions/ keeps the invariant (typed errors only)."""

from __future__ import annotations

import os
import shutil

import pytest

from fuzz import check, corpus, seeds


@pytest.fixture(scope="session")
def seed_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("seeds"))


def _damaged(seed_root, tmp_path, family, seed, damage):
    src = seeds.make(family, seed_root)[seed]
    # AFI names its channel files relative to itself: the damaged copy sits next to them
    dst = os.path.join(os.path.dirname(src), "damaged-" + seed) if family == "afi" else str(tmp_path / seed)
    shutil.copy(src, dst)
    damage(dst)
    return dst


def _failures(path):
    return [f.split(": ", 2) for f in check.exercise(path)]


@pytest.mark.parametrize(("family", "seed", "name", "damage", "step", "error"), corpus.MUST_FAIL,
                         ids=[f"{c[1]}: {c[2]}" for c in corpus.MUST_FAIL])
def test_damage_fails_typed(seed_root, tmp_path, family, seed, name, damage, step, error):
    p = _damaged(seed_root, tmp_path, family, seed, damage)
    found = [(s, cls, msg) for s, cls, msg in _failures(p) if s.startswith(step)]
    assert found, f"{name}: nothing failed at {step!r}"
    assert any(cls == error.__name__ for _, cls, _ in found), found
    assert all(os.path.basename(p) in msg for _, _, msg in found), found


@pytest.fixture(scope="module")
def level0_instance(seed_root):
    import pydicom

    files = seeds.make("dicom", seed_root)
    return max(files.values(), key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).TotalPixelMatrixColumns))


@pytest.mark.parametrize(("name", "damage", "step", "error"), corpus.DICOM_FAIL,
                         ids=[c[0] for c in corpus.DICOM_FAIL])
def test_dicom_damage_fails_typed(level0_instance, tmp_path, name, damage, step, error):
    p = str(tmp_path / "level0.dcm")  # alone in its folder: the damaged instance is the slide
    shutil.copy(level0_instance, p)
    damage(p)
    found = [(s, cls, msg) for s, cls, msg in _failures(p) if s.startswith(step)]
    assert found and all(cls == error.__name__ and "level0.dcm" in msg for _, cls, msg in found), found


@pytest.mark.parametrize(("family", "seed", "name", "damage", "allowed"), corpus.MUST_READ,
                         ids=[f"{c[1]}: {c[2]}" for c in corpus.MUST_READ])
def test_damage_still_reads(seed_root, tmp_path, family, seed, name, damage, allowed):
    p = _damaged(seed_root, tmp_path, family, seed, damage)
    failed = _failures(p)
    assert all(s.startswith(allowed) for s, _, _ in failed), failed
    if not allowed:
        assert failed == []


def test_garbage_sibling_does_not_stop_the_slide(seed_root, tmp_path):
    """A folder's file that looks like DICOM and is not: the slide of the others reads."""
    folder = tmp_path / "slide"
    shutil.copytree(os.path.dirname(next(iter(seeds.make("dicom", seed_root).values()))), folder)
    (folder / "junk.dcm").write_bytes(b"\0" * 128 + b"DICM" + os.urandom(4000))
    assert check.exercise(str(folder), dropin=False) == []


REGRESSIONS = os.path.join(os.path.dirname(__file__), os.pardir, "fuzz", "regressions")


def _regressions():
    out = []
    for family in sorted(os.listdir(REGRESSIONS)) if os.path.isdir(REGRESSIONS) else []:
        for name in sorted(os.listdir(os.path.join(REGRESSIONS, family))):
            out.append((family, name))
    return out


@pytest.mark.parametrize(("family", "name"), _regressions(), ids=[f"{f}/{n}" for f, n in _regressions()])
def test_fuzzer_findings_stay_fixed(tmp_path, family, name):
    src = os.path.join(REGRESSIONS, family, name)
    if family == "dicomweb":
        from fuzz import webserver

        _, run = webserver.dicomweb_target()
        with open(src, "rb") as f:
            run(f.read())
        return
    if family == "zarr":  # a packed store
        with open(src, "rb") as f:
            seeds.unpack_store(f.read(), str(tmp_path / "s.zarr"))
        check.exercise(str(tmp_path / "s.zarr"))
        return
    dst = str(tmp_path / (name + seeds.EXTENSIONS[family]))
    shutil.copy(src, dst)
    check.exercise(dst)  # typed errors only: anything else fails the test


def _signatures(paths: list[str]) -> list[list[tuple[str, str]]]:
    """What failed, and how, for each of ``paths``: (step, error class) pairs."""
    return [[(s, cls) for s, cls, _ in _failures(p)] for p in paths]


def test_the_corpus_in_a_forked_worker(seed_root, tmp_path):
    """The corruption corpus and the fuzzers' findings fail the same way in a forked child of a
    process that was reading slides when it forked (a DataLoader's worker, a pool's process)."""
    import multiprocessing as mp

    paths = []
    for k, (family, seed, _name, damage, _step, _error) in enumerate(corpus.MUST_FAIL):
        if family == "afi":  # its damaged copies sit beside the seeds' channel files
            continue
        (tmp_path / str(k)).mkdir()
        paths.append(_damaged(seed_root, tmp_path / str(k), family, seed, damage))
    for family, name in _regressions():
        if family in ("dicomweb", "afi"):
            continue
        (tmp_path / f"r-{family}-{name}").mkdir()
        paths.append(shutil.copy(os.path.join(REGRESSIONS, family, name),
                                 tmp_path / f"r-{family}-{name}" / (name + seeds.EXTENSIONS[family])))
    import tilescope

    with tilescope.open(seeds.make("tiff", seed_root)[sorted(seeds.make("tiff", seed_root))[0]]) as busy:
        busy.scenes[0].read(size=(256, 0))  # the parent's caches, pools and handles are in use
        with mp.get_context("fork").Pool(1) as pool:
            forked = pool.apply(_signatures, ([str(p) for p in paths],))
    assert forked == _signatures([str(p) for p in paths])
    assert sum(map(len, forked)) >= len(corpus.MUST_FAIL) // 2  # the damage did fail them
