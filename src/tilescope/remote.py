"""Slides on web servers and in object storage: a :class:`~tilescope.source.ByteSource` read by
byte ranges, so every single-file format opens from a URL without the format knowing.

``http(s)://`` is read with the standard library's ``http.client`` (a keep-alive connection per
thread; the first ranged GET gives the size, the ETag / Last-Modified and whether the server serves
ranges); ``s3://``, ``gs://``,
``az://`` / ``abfs://`` with fsspec's filesystems (s3fs, gcsfs, adlfs: credentials from their
usual places — ``AWS_*``, profiles, instance roles — plus ``storage_options``). obstore was tried
first: its tokio runtime does not survive ``fork`` (a forked child's first request hangs, even on
a new store), and a DataLoader's or a multiprocessing pool's workers are forked.

Reads go through a per-slide block cache of fetched spans (LRU, ``cache_bytes``): the first miss
reads ``min_read`` bytes from where it starts and each later one 4x more (up to 4 MiB), so an IFD
chain spread over the file or a CZI directory at its end come in few requests; the engine hands
a read's pieces over first (:meth:`RemoteSource.prefetch`), ranges closer than ``gap`` bytes are
coalesced into spans of at most ``max_span`` bytes, the spans are fetched ``connections`` at a
time, and each piece's decode waits only for its own span.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import CorruptDataError, RemoteError, SlideClosedError, SourceChangedError, SourceNotFoundError

HTTP_SCHEMES = ("http://", "https://")
READAHEAD = 4 << 20  # the most a cache miss reads beyond what it asked for (see RemoteSource._view)
_PINNED = 64 << 20  # bytes of spans kept past cache_bytes for the reads that asked for them
STORE_SCHEMES = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://")
SCHEMES = HTTP_SCHEMES + STORE_SCHEMES


def is_remote(source: Any) -> bool:
    return isinstance(source, str) and source.startswith(SCHEMES)


@dataclass(frozen=True)
class RemoteOptions:
    """What ``tilescope.open(url, ...)`` takes for a slide on a server or in a bucket.

    ``storage_options`` go to the client: for HTTP ``headers`` (authentication) and ``verify``
    (False, or a CA bundle's path); for object stores fsspec's filesystem keywords (``anon``,
    ``key``, ``secret``, ``endpoint_url``, ``client_kwargs``, ``profile``, ...). The rest say how it
    is read: requests in flight at once, the block cache's size, the smallest read, the gap below
    which two ranges are fetched as one, per-request ``timeout`` (s) and ``retries`` (with back-off,
    on connection errors, 5xx and 429), and how much of a server that ignores ranges may be
    downloaded whole."""

    storage_options: dict[str, Any] = field(default_factory=dict)
    connections: int = 8
    cache_bytes: int = 64 << 20
    min_read: int = 256 << 10
    gap: int = 64 << 10
    max_span: int = 16 << 20
    timeout: float = 30.0
    retries: int = 3
    max_download: int = 64 << 20


URL_OPTIONS = RemoteOptions


class _Stat:
    def __init__(self, size: int, tag: str | None, ranges: bool = True, version: str | None = None):
        self.size, self.tag, self.ranges, self.version = size, tag, ranges, version


class _Http:
    """Range requests over HTTP(S) with the standard library's ``http.client``: one keep-alive
    connection per thread and server. urllib3's pool cost twice the CPU per request here (0.24 ms
    against 0.12 for a 64 KiB range from nginx on loopback), the most of a remote region's cost
    beyond decoding; what it added that we use (retries with back-off on connection errors, 5xx
    and 429, ``Retry-After``, redirects, TLS settings) is below."""

    _REDIRECTS = 5

    def __init__(self, url: str, opts: RemoteOptions):
        so = dict(opts.storage_options)
        self.url = url
        self.headers = dict(so.pop("headers", None) or {})
        verify = so.pop("verify", True)
        if so:
            raise RemoteError(f"{url}: unknown storage_options for HTTP: {sorted(so)} "
                              "(known: headers, verify)")
        self._tls: Any = None
        if url.startswith("https://") or verify is not True:
            import ssl

            if verify is False:
                self._tls = ssl.create_default_context()
                self._tls.check_hostname, self._tls.verify_mode = False, ssl.CERT_NONE
            else:
                self._tls = ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)
        self.timeout, self.retries = opts.timeout, opts.retries
        self._local = threading.local()  # this thread's connections: (scheme, host, port) -> conn
        self._all: list[Any] = []  # every connection made, for close()
        self._lock = threading.Lock()
        self.tag: str | None = None
        self.version: str | None = None

    def _connection(self, parts: Any) -> Any:
        import http.client

        conns = self._local.__dict__.setdefault("conns", {})
        key = (parts.scheme, parts.hostname, parts.port)
        conn = conns.get(key)
        if conn is None:
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                                   context=self._tls)
            else:
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
            conns[key] = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _forget(self, parts: Any) -> None:
        conn = self._local.__dict__.get("conns", {}).pop((parts.scheme, parts.hostname, parts.port), None)
        if conn is not None:
            conn.close()

    def _request(self, headers: dict[str, str], what: str) -> Any:
        """A GET's response, its body not read yet (the caller reads it all, or closes it),
        after redirects and retries; RemoteError when the server cannot be reached."""
        import http.client
        import time
        from urllib.parse import urljoin, urlsplit

        attempt = 0
        while True:
            url, parts = self.url, urlsplit(self.url)
            try:
                for _ in range(self._REDIRECTS + 1):
                    conn = self._connection(parts)
                    target = parts.path + (f"?{parts.query}" if parts.query else "")
                    conn.request("GET", target or "/", headers={**self.headers, **headers})
                    r = conn.getresponse()
                    location = r.getheader("Location")
                    if r.status not in (301, 302, 303, 307, 308) or not location:
                        break
                    r.read()
                    url = urljoin(url, location)
                    parts = urlsplit(url)
                else:
                    raise RemoteError(f"{self.url}: {what}: more than {self._REDIRECTS} redirects")
            except (OSError, http.client.HTTPException) as e:
                self._forget(parts)
                if attempt >= self.retries:
                    raise RemoteError(f"{self.url}: GET {what} failed: {type(e).__name__}: {e}") from None
            else:
                if r.status not in (429, 500, 502, 503, 504) or attempt >= self.retries:
                    return _Response(r, lambda p=parts: self._forget(p))
                wait = r.getheader("Retry-After", "")
                r.read()
                if wait.isdigit():
                    time.sleep(min(float(wait), self.timeout))
                    attempt += 1
                    continue
            time.sleep(0.2 * 2 ** attempt if attempt else 0)
            attempt += 1

    def _status(self, r: Any, what: str) -> None:
        if r.status == 404 or r.status == 410:
            raise SourceNotFoundError(f"{self.url}: not found ({r.status})")
        if r.status in (401, 403):
            raise RemoteError(f"{self.url}: access denied ({r.status}): credentials are missing or wrong")
        if r.status == 412:
            raise SourceChangedError(f"{self.url}: changed on the server while being read "
                                     f"(ETag no longer {self.tag})")
        if not 200 <= r.status < 300:
            raise RemoteError(f"{self.url}: {what}: the server answered {r.status}")

    def first(self, n: int, limit: int) -> tuple[_Stat, bytes]:
        """The first ``n`` bytes and what they tell of the file, in one request: a 206's
        Content-Range gives the size; a server that ignores ranges (200) sends the whole body,
        kept if it is at most ``limit`` bytes."""
        with self._request({"Range": f"bytes=0-{n - 1}"}, f"bytes 0-{n - 1}") as r:
            if r.status == 416:  # an empty file has no byte 0
                return _Stat(0, None), b""
            self._status(r, f"bytes 0-{n - 1}")
            self.tag = r.getheader("ETag") or r.getheader("Last-Modified")
            if r.status == 206:
                total = (r.getheader("Content-Range") or "").rpartition("/")[2]
                if not total.isdigit():
                    raise RemoteError(f"{self.url}: the server gives no size (Content-Range {total!r})")
                return _Stat(int(total), self.tag), r.read(n + 1)
            length = r.getheader("Content-Length") or ""
            if length.isdigit() and int(length) > limit:
                raise RemoteError(f"{self.url}: the server does not serve byte ranges and the file "
                                  f"({length} bytes) is larger than max_download ({limit} bytes)")
            data = r.read(limit + 1)
            if len(data) > limit:
                raise RemoteError(f"{self.url}: the server does not serve byte ranges and the file is "
                                  f"larger than max_download ({limit} bytes)")
            return _Stat(len(data), self.tag, ranges=False), data

    def _check_tag(self, r: Any) -> None:
        tag = r.getheader("ETag") or r.getheader("Last-Modified")
        if self.tag is not None and tag is not None and tag != self.tag:
            raise SourceChangedError(f"{self.url}: changed on the server while being read "
                                     f"(ETag {self.tag} at open, {tag} now)")

    def get(self, start: int, end: int) -> bytes:
        headers = {"Range": f"bytes={start}-{end - 1}"}
        if self.tag is not None:
            headers["If-Match" if self.tag.startswith(('"', 'W/"')) else "If-Unmodified-Since"] = self.tag
        with self._request(headers, f"bytes {start}-{end - 1}") as r:
            self._status(r, f"bytes {start}-{end - 1}")
            if r.status != 206:
                raise RemoteError(f"{self.url}: the server ignored a range request (answered {r.status} "
                                  f"with the whole body)")
            self._check_tag(r)
            return r.read(end - start + 1)  # at most one byte more than asked: a longer body is an error

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()


class _Response:
    """An ``http.client`` response as a context: on leaving, a body not read to its end (an
    error, a refused answer) closes the connection, so the next request starts clean."""

    def __init__(self, r: Any, forget: Any):
        self._r, self._forget = r, forget

    def __enter__(self) -> Any:
        return self._r

    def __exit__(self, kind: Any, *rest: Any) -> None:
        r = self._r
        if kind is not None or not r.isclosed():
            try:
                done = kind is None and r.read(1) == b"" and r.isclosed()
            except Exception:  # a broken body: the connection goes with it
                done = False
            if not done:
                self._forget()


class _Store:
    """Range reads from an object store through its fsspec filesystem."""

    def __init__(self, url: str, opts: RemoteOptions):
        try:
            import fsspec
        except ImportError:
            raise RemoteError(f"{url}: object stores need the [remote] extra "
                              "(fsspec, s3fs, gcsfs, adlfs)") from None
        self.url = url
        protocol = url.split("://", 1)[0]
        try:
            self.fs = fsspec.filesystem(protocol, **opts.storage_options)
        except ImportError as e:
            raise RemoteError(f"{url}: the {protocol}:// filesystem is not installed ({e}): see the [remote] "
                              "extra") from None
        except (TypeError, ValueError) as e:
            raise RemoteError(f"{url}: bad storage_options: {e}") from None
        self.tag: str | None = None
        self.version: str | None = None

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except FileNotFoundError:
            raise SourceNotFoundError(f"{self.url}: not found") from None
        except PermissionError as e:
            raise RemoteError(f"{self.url}: access denied: credentials are missing or wrong ({e})") from None
        except OSError as e:
            raise RemoteError(f"{self.url}: {what} failed: {type(e).__name__}: {e}") from None
        except Exception as e:  # a client's own errors (botocore's, aiohttp's): ours, naming the URL
            raise RemoteError(f"{self.url}: {what} failed: {type(e).__name__}: {e}") from None

    def first(self, n: int, limit: int) -> tuple[_Stat, bytes]:
        """What the object is and its first ``n`` bytes: on S3 one ranged GET (its Content-Range
        gives the size); elsewhere (or for an empty object) a HEAD, and no bytes yet."""
        if hasattr(self.fs, "_call_s3"):
            got = self._call("bytes 0-", self._s3_first, n)
            if got is not None:
                return got
        info = self._call("stat", self.fs.info, self.url)
        if info.get("type") == "directory":
            raise SourceNotFoundError(f"{self.url}: is a folder (prefix), not an object")
        tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime")
        self.version = info.get("VersionId") if info.get("VersionId") not in (None, "null") else None
        self.tag = str(info["ETag"]) if info.get("ETag") else None  # S3's reads send it as If-Match
        return _Stat(int(info["size"]), None if tag is None else str(tag), version=self.version), b""

    def _s3_get(self, start: int, end: int, **kw: Any) -> tuple[dict, bytes]:
        """An S3 GetObject of bytes [start, end) through s3fs's client: the answer's headers too."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.url)

        async def get() -> tuple[dict, bytes]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key,
                                          Range=f"bytes={start}-{end - 1}", **kw)
            try:
                return resp, await resp["Body"].read()
            finally:
                resp["Body"].close()

        return sync(self.fs.loop, get)

    def _s3_first(self, n: int) -> tuple[_Stat, bytes] | None:
        try:
            resp, data = self._s3_get(0, n)
        except (FileNotFoundError, PermissionError):
            raise
        except Exception:  # an empty object has no byte 0 (InvalidRange): the HEAD tells
            return None
        total = str(resp.get("ContentRange", "")).rpartition("/")[2]
        if not total.isdigit():
            return None
        version = resp.get("VersionId")
        self.version = version if version not in (None, "null") else None
        self.tag = resp.get("ETag")
        return _Stat(int(total), self.tag, version=self.version), data

    def get(self, start: int, end: int) -> bytes:
        what = f"bytes {start}-{end - 1}"
        if hasattr(self.fs, "_call_s3"):  # S3: the open's version, or If-Match on its ETag
            kw = {"VersionId": self.version} if self.version else {"IfMatch": self.tag} if self.tag else {}
            try:
                return self._call(what, self._s3_get, start, end, **kw)[1]
            except RemoteError as e:
                # s3fs turns S3's 412 PreconditionFailed into an OSError with S3's message
                if any(s in str(e) for s in ("PreconditionFailed", "pre-conditions", "412")):
                    raise SourceChangedError(f"{self.url}: changed in the bucket while being read (ETag no "
                                             f"longer {self.tag})") from None
                raise
        kw = {"version_id": self.version} if self.version else {}
        return self._call(what, self.fs.cat_file, self.url, start=start, end=end, **kw)

    def close(self) -> None:
        pass


def _client(url: str, opts: RemoteOptions) -> _Http | _Store:
    return _Http(url, opts) if url.startswith(HTTP_SCHEMES) else _Store(url, opts)


class RemoteSource:
    """A slide's bytes on a server or in a bucket. Thread-safe; forks and pickles as its URL."""

    batches = True  # the engine hands over a read's pieces first (prefetch)

    def __init__(self, url: str, options: RemoteOptions | None = None):
        self.path = url
        self.options = opts = options or RemoteOptions()
        if opts.connections < 1 or opts.min_read < 1 or opts.cache_bytes < 0:
            raise RemoteError(f"{url}: connections and min_read must be >= 1, cache_bytes >= 0")
        self._client: _Http | _Store | None = _client(url, opts)
        n = min(opts.min_read, opts.max_span)
        st, first = self._client.first(n, opts.max_download)
        self.size, self._version = st.size, st.version
        self.identity = ("remote", url, st.size, st.tag)
        # a server without ranges sent the whole file (if small enough): read from memory
        self._whole = None if st.ranges else first
        self.requests = 1  # requests so far, the first included (what the tests and the benchmark count)
        self._fresh()
        if first and st.ranges:
            if len(first) != min(n, self.size):
                raise CorruptDataError(f"{url}: the server sent {len(first)} bytes of a "
                                       f"{self.size}-byte file")
            self._spans[0] = (len(first), first)
            self._starts.append(0)
            self._held = len(first)
            self._window = min(4 * n, max(n, READAHEAD))

    def _fresh(self) -> None:
        self._lock = threading.Lock()
        self._spans: OrderedDict[int, tuple[int, bytes | Future]] = OrderedDict()  # start -> (end, data)
        self._starts: list[int] = []
        self._held = 0  # bytes of the completed spans
        # spans fetched for a read: start -> its pieces not taken yet. They stay, past cache_bytes,
        # until the read has them (else a decode thread that comes after the span would ask again)
        self._pins: dict[int, int] = {}
        self._window = self.options.min_read  # the next cache miss reads this much (it grows)
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False

    def _after_fork(self) -> None:
        # connections, the pool and spans in flight are the parent's: start over with new ones. The
        # client is made on first use, not here: fsspec resets its event loop in its own at-fork
        # hook, which may run after this one (a filesystem made here would keep the dead loop)
        self._client = None
        self._fresh()

    def _get(self, start: int, end: int) -> bytes:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = _client(self.path, self.options)
                    self._client.tag, self._client.version = self.identity[3], self._version
                client = self._client
        return client.get(start, end)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the block cache ---------------------------------------------------------------------
    def _find(self, offset: int, end: int) -> tuple[int, bytes | Future] | None:
        """(start, data or a future of it) of a span holding [offset, end); with the lock held."""
        i = bisect.bisect_right(self._starts, offset)
        for start in reversed(self._starts[max(0, i - 4):i]):  # spans overlap rarely: a few suffice
            span_end, data = self._spans[start]
            if span_end >= end:
                self._spans.move_to_end(start)
                return start, data
        return None

    def _claim(self, start: int, end: int) -> Future:
        fut: Future = Future()
        if start in self._spans:  # a shorter span at the same start: the new one replaces it
            self._drop(start)
        self._spans[start] = (end, fut)
        bisect.insort(self._starts, start)
        return fut

    def _drop(self, start: int) -> None:
        end, data = self._spans.pop(start)
        self._starts.remove(start)
        self._pins.pop(start, None)
        if not isinstance(data, Future):
            self._held -= end - start

    def _fill(self, start: int, end: int, fut: Future) -> None:
        """Fetch span [start, end) into ``fut`` (and the cache); a failure is kept by the future
        (its waiters raise it) and the span forgotten, so a later read asks again."""
        try:
            if self._whole is not None:
                data = self._whole[start:end]
            else:
                with self._lock:
                    self.requests += 1
                data = self._get(start, end)
            if len(data) != end - start:
                raise CorruptDataError(f"{self.path}: the server sent {len(data)} bytes for bytes "
                                       f"{start}-{end - 1} of a {self.size}-byte file: short or changed")
        except BaseException as e:
            with self._lock:
                if self._spans.get(start, (0, None))[1] is fut:
                    self._drop(start)
            fut.set_exception(e)
            return
        with self._lock:
            if self._spans.get(start, (0, None))[1] is fut:
                self._spans[start] = (end, data)
                self._held += end - start
                self._evict()
        fut.set_result(data)

    def _evict(self) -> None:
        bound = self.options.cache_bytes
        for start in list(self._spans):
            if self._held <= bound:
                break
            # spans a read still needs stay, unless reads left them past _PINNED more bytes
            if not isinstance(self._spans[start][1], Future) and \
                    (start not in self._pins or self._held > bound + _PINNED):
                self._drop(start)

    # -- ByteSource --------------------------------------------------------------------------
    def _check(self, offset: int, count: int) -> None:
        if self._closed:
            raise SlideClosedError(f"{self.path}: slide is closed")
        if offset < 0 or count < 0 or offset + count > self.size:
            raise CorruptDataError(f"{self.path}: file is truncated or a size in it is forged: wanted "
                                   f"{count} bytes at offset {offset}, file has {self.size} bytes")

    def _view(self, offset: int, count: int) -> memoryview:
        self._check(offset, count)
        end = offset + count
        mine = None
        with self._lock:
            hit = self._find(offset, end)
            if hit is not None and hit[0] in self._pins:  # a read takes one of its pieces
                self._pins[hit[0]] -= 1
                if self._pins[hit[0]] <= 0:
                    del self._pins[hit[0]]
                    self._evict()
            if hit is None:
                # a parse walking the file (an IFD chain spread over it) misses again and again:
                # each miss reads 4x more than the last, up to READAHEAD, so it ends in few requests
                span_end = min(self.size, offset + max(count, self._window))
                self._window = min(4 * self._window, max(self.options.min_read, READAHEAD))
                hit = offset, (mine := self._claim(offset, span_end))
        start, data = hit
        if mine is not None:
            self._fill(offset, span_end, mine)
        if isinstance(data, Future):
            data = data.result()
        return memoryview(data)[offset - start:end - start]

    def pread(self, offset: int, count: int) -> bytes:
        return bytes(self._view(offset, count)) if count else b""

    def readinto(self, offset: int, buffer: Any) -> None:
        view = memoryview(buffer).cast("B")
        view[:] = self._view(offset, len(view))

    def head(self, n: int = 4096) -> bytes:
        return self.pread(0, min(n, self.size))

    def prefetch(self, ranges: list[tuple[int, int]]) -> None:
        """Start fetching the byte ranges ``(offset, count)`` (one read's pieces): those not held
        or in flight are coalesced into spans and requested ``connections`` at a time."""
        if self._closed:
            return
        opts = self.options
        todo: list[tuple[int, int]] = []
        pieces: list[int] = []  # how many of the read's ranges each span holds
        with self._lock:
            for offset, count in sorted(ranges):
                end = offset + count
                if count <= 0 or offset < 0 or end > self.size or self._find(offset, end):
                    continue
                if todo and offset - todo[-1][1] <= opts.gap and end - todo[-1][0] <= opts.max_span:
                    todo[-1] = (todo[-1][0], max(end, todo[-1][1]))
                    pieces[-1] += 1
                else:
                    todo.append((offset, end))
                    pieces.append(1)
            claimed = [(s, e, self._claim(s, e)) for s, e in todo]
            self._pins.update((s, n) for (s, _), n in zip(todo, pieces, strict=True))
            if claimed and self._pool is None:
                self._pool = ThreadPoolExecutor(opts.connections, thread_name_prefix="tilescope-remote")
            pool = self._pool
        for s, e, fut in claimed:
            assert pool is not None
            pool.submit(self._fill, s, e, fut)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            pool, self._pool = self._pool, None
            self._spans.clear()
            self._starts.clear()
            self._held = 0
            self._pins.clear()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()


def listing(folder: str, source: Any = None, options: RemoteOptions | None = None) -> list[str]:
    """The objects directly under ``folder`` (an object store's prefix), as URLs, sorted; read with
    ``options`` or those of ``source`` (a slide's own RemoteSource). A web server lists nothing: a
    folder on one is the file ``source`` alone (a slide of several files there opens by its list
    of URLs)."""
    opts = options or (source.options if isinstance(source, RemoteSource) else RemoteOptions())
    if folder.startswith(HTTP_SCHEMES):
        return [source.path] if isinstance(source, RemoteSource) else []
    store = _Store(folder, opts)
    protocol = folder.split("://", 1)[0]
    entries = store._call("list", store.fs.ls, folder.rstrip("/"), detail=True)
    return sorted(f"{protocol}://{e['name']}" for e in entries if e.get("type") == "file")
