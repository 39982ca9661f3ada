"""The deterministic corruption sweep: every named mutation of every seed, each run through the
invariant (fuzz.check.exercise) in a forked child with a time and memory limit. Prints a summary
and writes each finding (untyped escape, crash, hang, memory blow-up) to OUT/findings/.

    python -m fuzz.sweep OUT [--family tiff] [--timeout 10] [--seed-filter svs]
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import resource
import signal
import sys
import time
import traceback

from tilescope.formats import TIFF_MAGIC

from . import check, mutate, seeds  # check imported here: each child starts warm


def run_one(path: str, data: bytes, timeout: float, mem_mb: int) -> tuple[str, str]:
    """("ok" | "typed" | "untyped" | "crash" | "hang", detail) of one input, in a forked child."""
    with open(path, "wb") as f:
        f.write(data)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: limits, the invariant, one line back
        os.close(r)
        code, msg = 0, "ok"
        try:
            logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its warnings on each input
            resource.setrlimit(resource.RLIMIT_AS, (mem_mb << 20, mem_mb << 20))
            failed = check.exercise(path)
            msg = "typed" if failed else "ok"
        except MemoryError:
            code, msg = 3, "untyped MemoryError (memory limit)"
        except BaseException:
            code, msg = 2, "untyped " + traceback.format_exc(limit=-4)
        os.write(w, msg.encode()[:60000])
        os._exit(code)
    os.close(w)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
            return "hang", f"over {timeout} s"
        time.sleep(0.002)
    msg = os.read(r, 65536).decode(errors="replace")
    os.close(r)
    if os.WIFSIGNALED(status):
        return "crash", f"signal {os.WTERMSIG(status)}"
    if msg.startswith("untyped"):
        return "untyped", msg
    return msg, ""


def variants(path: str) -> list[mutate.Mutation]:
    with open(path, "rb") as f:
        b = f.read()
    ms = mutate.tiff_mutations(b) if b[:4] in TIFF_MAGIC else \
        mutate.byte_mutations(b)
    return list(ms)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--family", action="append", choices=[f for f in seeds.FAMILIES if f != "dicomweb"])
    ap.add_argument("--seed-filter", default="")
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--mem-mb", type=int, default=3000)
    a = ap.parse_args(argv)
    os.makedirs(os.path.join(a.out, "findings"), exist_ok=True)
    counts: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    for family in a.family or [f for f in seeds.FAMILIES if f != "dicomweb"]:
        for name, seed in seeds.make(family, os.path.join(a.out, "seeds")).items():
            if a.seed_filter not in name:
                continue
            with open(seed, "rb") as f:
                orig = f.read()
            # the input sits where the seed did (AFI and DICOM read their folder's other files)
            target = os.path.join(os.path.dirname(seed), "fuzzed-" + os.path.basename(seed))
            for mname, fn in variants(seed):
                result, detail = run_one(target, fn(orig), a.timeout, a.mem_mb)
                counts[result] += 1
                if result in ("untyped", "crash", "hang"):
                    key = detail.strip().splitlines()[-1][:120] if detail else result
                    kinds[key] += 1
                    tag = f"{family}-{name.replace('/', '_')}-{mname}".replace("/", "_")[:150]
                    with open(os.path.join(a.out, "findings", tag), "wb") as f:
                        f.write(fn(orig))
                    last = detail.strip().splitlines()[-1] if detail else ""
                    print(f"{result}: {family}/{name} {mname}: {last}", flush=True)
            os.unlink(target)
            print(f"# {family}/{name}: {dict(counts)}", flush=True)
    print("# totals", dict(counts))
    for k, n in kinds.most_common():
        print(f"{n:6d}  {k}")
    return 1 if counts["untyped"] + counts["crash"] + counts["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
