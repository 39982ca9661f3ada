"""Named, deterministic mutations of seed files: the corruption sweep's variants and the corpus's
cases. A mutation is a name and a function bytes -> bytes; ``tiff_entries`` walks a TIFF's IFDs
(its own walk, not tifffile's: the point is to reach the bytes a parser trusts)."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

Mutation = tuple[str, Callable[[bytes], bytes]]

# values that break parsers: zero, one, sign and width boundaries, and "much larger than the file"
NASTY = (0, 1, 2, 3, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)


def _put(b: bytes, pos: int, raw: bytes) -> bytes:
    return b[:pos] + raw + b[pos + len(raw):]


def tiff_entries(b: bytes, max_ifds: int = 64) -> Iterator[tuple[int, int, int, int, int]]:
    """(IFD offset, entry offset, tag, type, count) of every IFD entry reachable from the header
    (next-IFD links only; at most ``max_ifds``; NDPI's 64-bit links are not followed)."""
    bo = "<" if b[:2] == b"II" else ">"
    big = b[2:4] in (b"+\x00", b"\x00+")
    fmt_n, fmt_c, off_at, esize = ("Q", "Q", 8, 20) if big else ("H", "I", 4, 12)
    nsize = 8 if big else 2
    (ifd,) = struct.unpack_from(bo + ("Q" if big else "I"), b, off_at)
    seen = set()
    while ifd and ifd not in seen and len(seen) < max_ifds and ifd + nsize <= len(b):
        seen.add(ifd)
        (n,) = struct.unpack_from(bo + fmt_n, b, ifd)
        for i in range(min(n, 4096)):
            e = ifd + nsize + i * esize
            if e + esize > len(b):
                return
            tag, typ = struct.unpack_from(bo + "HH", b, e)
            (count,) = struct.unpack_from(bo + fmt_c, b, e + 4)
            yield ifd, e, tag, typ, count
        nxt = ifd + nsize + n * esize
        if nxt + (8 if big else 4) > len(b):
            return
        (ifd,) = struct.unpack_from(bo + ("Q" if big else "I"), b, nxt)


def tiff_mutations(b: bytes) -> Iterator[Mutation]:
    """Per IFD entry: its type, its count and its (first) value set to each value of NASTY-ish
    sets; per IFD: its next link pointing at itself and at the first IFD; plus truncations."""
    bo = "<" if b[:2] == b"II" else ">"
    big = b[2:4] in (b"+\x00", b"\x00+")
    csize = 8 if big else 4
    ifds = []
    for ifd, e, tag, typ, count in tiff_entries(b):
        if ifd not in ifds:
            ifds.append(ifd)
        where = f"ifd{len(ifds) - 1}.tag{tag}"
        for t in (1, 2, 3, 4, 5, 11, 12, 16, 99):
            if t != typ:
                yield f"{where}.type={t}", lambda b, e=e, t=t: _put(b, e + 2, struct.pack(bo + "H", t))
        for c in (0, 1, 2, count - 1, count + 1, count * 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF):
            if 0 <= c != count:
                yield f"{where}.count={c}", lambda b, e=e, c=c: _put(
                    b, e + 4, struct.pack(bo + ("Q" if big else "I"), c))
        v = e + 4 + csize
        for x in NASTY:
            yield f"{where}.value={x}", lambda b, v=v, x=x, t=typ: _put(b, v, _value(bo, t, x, csize))
    for i, ifd in enumerate(ifds):
        (n,) = struct.unpack_from(bo + ("Q" if big else "H"), b, ifd)
        link = ifd + (8 if big else 2) + n * (20 if big else 12)
        raw = struct.pack(bo + ("Q" if big else "I"), ifd)
        yield f"ifd{i}.next=self", lambda b, link=link, raw=raw: _put(b, link, raw)
        first = struct.pack(bo + ("Q" if big else "I"), ifds[0])
        yield f"ifd{i}.next=first", lambda b, link=link, raw=first: _put(b, link, raw)
    yield from truncations(b)


def _value(bo: str, typ: int, x: int, size: int) -> bytes:
    """``x`` as the entry's first value in its own type (SHORT values sit in the first 2 bytes)."""
    if typ == 3:
        return struct.pack(bo + "H", x & 0xFFFF)
    if typ in (1, 2, 6, 7):
        return bytes([x & 0xFF])
    return struct.pack(bo + ("Q" if size == 8 else "I"), x & (2 ** (8 * size) - 1))


def truncations(b: bytes) -> Iterator[Mutation]:
    for frac in (0.0005, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
        n = max(1, int(len(b) * frac))
        yield f"truncate@{n}", lambda b, n=n: b[:n]


def byte_mutations(b: bytes, spread: int = 200) -> Iterator[Mutation]:
    """Formats without a walker of ours: bytes at every 4th position of the first KiB (headers,
    directories) and at ``spread`` positions over the rest set to 0xFF and one bit flipped, a
    32-bit little-endian size forged at each; plus truncations."""
    spots = list(range(0, min(len(b), 1024), 4))
    if len(b) > 1024:
        spots += list(range(1024, len(b), max(1, (len(b) - 1024) // spread)))
    for p in spots:
        yield f"byte@{p}=0xff", lambda b, p=p: _put(b, p, b"\xff")
        yield f"byte@{p}^0x10", lambda b, p=p: _put(b, p, bytes([b[p] ^ 0x10]))
        if p + 4 <= len(b):
            yield f"u32@{p}=huge", lambda b, p=p: _put(b, p, struct.pack("<I", 0x7FFFFFF0))
    yield from truncations(b)
