"""Coverage-guided fuzzing of one container family with atheris (libFuzzer). Each input is
written to a file in /dev/shm and run through the invariant (fuzz.check.exercise); an untyped
exception, a crash, a timeout (-timeout) or an RSS blow-up (-rss_limit_mb) is a finding,
saved by libFuzzer as crash-*/timeout-*/oom-* in the working directory.

    python -m fuzz.harness FAMILY CORPUS_DIR [libFuzzer flags: -max_total_time=60 -timeout=10 ...]

The seed corpus (fuzz.seeds) is copied into CORPUS_DIR on first use; findings fixed since are
kept in fuzz/regressions/FAMILY/ and replayed by the tests.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import warnings

import atheris

with atheris.instrument_imports(include=["tilescope", "tifffile", "pydicom", "dicomweb_client"]):
    import tifffile  # noqa: F401

    import tilescope  # noqa: F401  (instrumented here so coverage guides the fuzzer)

from . import check, seeds
from .webserver import dicomweb_input, dicomweb_target

logging.getLogger("tifffile").setLevel(logging.CRITICAL)
warnings.simplefilter("ignore")  # pydicom's and tifffile's warnings on every broken input


def _steady_heap() -> None:
    """glibc's malloc raises its mmap threshold after each large free (up to 32 MB) and keeps one
    arena per thread: over 10^5 hostile inputs, each allocating and freeing tables of every size,
    the heap fragments and RSS climbs (DICOM: 1.4 GB after 30,000 inputs; a fixed 128 KiB
    threshold and 2 arenas: 0.46 GB), a false out-of-memory finding. Fixed here, as
    MALLOC_MMAP_THRESHOLD_ / MALLOC_ARENA_MAX would be."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def main() -> None:
    _steady_heap()
    family, corpus = sys.argv[1], sys.argv[2]
    if family not in seeds.FAMILIES:
        sys.exit(f"family must be one of {', '.join(seeds.FAMILIES)}")
    if not os.path.isdir(corpus) or not os.listdir(corpus):
        os.makedirs(corpus, exist_ok=True)
        made = seeds.make(family, os.path.join(tempfile.gettempdir(), "tilescope-seeds"))
        if family == "dicomweb":
            with open(made["metadata.json"], "rb") as m, open(made["frames.multipart"], "rb") as f, \
                    open(os.path.join(corpus, "seed"), "wb") as out:
                out.write(dicomweb_input(m.read(), f.read()))
        else:
            for name, path in made.items():
                shutil.copy(path, os.path.join(corpus, name.replace("/", "_")))
    if family == "dicomweb":
        _, run = dicomweb_target()
    elif family == "zarr":  # an input is a packed store (seeds.pack_store), unpacked into a folder
        store = os.path.join(tempfile.mkdtemp(prefix="tilescope-fuzz-zarr-", dir="/dev/shm"), "s.zarr")

        def run(data: bytes) -> None:
            seeds.unpack_store(data, store)
            check.exercise(store)
    else:
        # AFI inputs sit next to the channel files they name; others alone in a folder of their own
        folder = os.path.join(tempfile.gettempdir(), "tilescope-seeds", "afi") if family == "afi" else \
            tempfile.mkdtemp(prefix=f"tilescope-fuzz-{family}-", dir="/dev/shm")
        if family == "afi":
            seeds.make("afi", os.path.dirname(folder))
        target = os.path.join(folder, f"fuzzed{os.getpid()}{seeds.EXTENSIONS[family]}")

        def run(data: bytes) -> None:
            with open(target, "wb") as f:
                f.write(data)
            check.exercise(target)

    atheris.Setup([sys.argv[0], corpus, *sys.argv[3:]], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
