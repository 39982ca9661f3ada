"""Real servers on 127.0.0.1 for the remote-storage tests and benchmarks: Debian's nginx serving a
folder (with byte ranges; under ``/noranges/`` without; ``/private/`` forbidden; ``/auth/`` only
with the header ``Authorization: Bearer tilescope``; ``/throttled/``
answering 429 above 10 requests a second), moto's standalone S3 server, and a TCP proxy that
delays every request by a fixed time (what a bucket's round trip costs, without ``tc netem``)."""

from __future__ import annotations

import contextlib
import http.client
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

NGINX_CONF = """daemon off;
{user}worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 512; }}
http {{
  access_log {tmp}/access.log;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp};
  uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  types {{ }}
  default_type application/octet-stream;
  limit_req_zone $server_port zone=throttle:1m rate=10r/s;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    location /noranges/ {{ alias {root}/; max_ranges 0; }}
    location /private/ {{ deny all; }}
    location /auth/ {{ alias {root}/; if ($http_authorization != "Bearer tilescope") {{ return 401; }} }}
    location /throttled/ {{ alias {root}/; limit_req zone=throttle burst=2 nodelay; limit_req_status 429; }}
  }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {seconds} s")


@contextlib.contextmanager
def running(argv: list[str], port: int, what: str, seconds: float = 30) -> Iterator[str]:
    """A server process started from ``argv`` that listens on 127.0.0.1:``port``: its base URL once
    it listens; stopped (killed if it lingers) on exit."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(port, proc, what, seconds)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


@contextlib.contextmanager
def nginx(root: str) -> Iterator[str]:
    """nginx serving ``root`` at the URL yielded (``http://127.0.0.1:PORT``)."""
    binary = nginx_binary()
    if binary is None:
        raise FileNotFoundError("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tilescope-nginx") as tmp:
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            # workers as this user (started as root, nginx would run them as nobody: no access to root)
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
            f.write(NGINX_CONF.format(user=user, tmp=tmp, port=port, root=os.path.abspath(root)))
        with running([binary, "-c", conf, "-p", tmp], port, "nginx") as url:
            yield url


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server; yields its endpoint URL. Any access key and secret sign
    requests; unsigned (anonymous) requests are refused unless the object's ACL is public-read."""
    port = free_port()
    with running([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port,
                 "moto_server", 60) as url:
        yield url


S3_KEYS = {"key": "tilescope", "secret": "tilescope-secret"}


def s3_options(endpoint: str) -> dict:
    """``storage_options`` for a signed client of :func:`s3_server`."""
    return {**S3_KEYS, "endpoint_url": endpoint, "client_kwargs": {"region_name": "us-east-1"}}


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["key"],
                        aws_secret_access_key=S3_KEYS["secret"], region_name="us-east-1")


@contextlib.contextmanager
def delay_proxy(target: str, delay: float) -> Iterator[str]:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (``http://host:port``) that holds each chunk
    a client sends (a request, on a kept-alive connection) for ``delay`` seconds before passing it
    on; answers come back at once. Yields the proxy's ``http://127.0.0.1:PORT``."""
    import asyncio
    import threading
    from urllib.parse import urlsplit

    host, port = urlsplit(target).hostname, urlsplit(target).port
    loop = asyncio.new_event_loop()

    async def pipe(reader, writer, wait: float) -> None:
        try:
            while data := await reader.read(1 << 16):
                if wait:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(c_reader, c_writer) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(pipe(c_reader, s_writer, delay), pipe(s_reader, c_writer, 0))
        except (ConnectionError, asyncio.CancelledError):  # the target went, or the proxy stops
            c_writer.close()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()
        tasks = asyncio.all_tasks(loop)  # connections still open: ended before the loop closes
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(asyncio.start_server(handle, "127.0.0.1", 0), loop).result(10)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@contextlib.contextmanager
def tilescope_server(root: str, *args: str) -> Iterator[str]:
    """``tilescope serve root`` on a free port of 127.0.0.1 (uvicorn), as its base URL; stopped on exit."""
    port = free_port()
    with running([sys.executable, "-m", "tilescope", "serve", root, "--port", str(port), *args], port,
                 "tilescope serve") as url:
        yield url


def load(base: str, paths: list[str], clients: int, seconds: float) -> dict:
    """A load test of a server on loopback: ``clients`` threads (one keep-alive connection each)
    fetching ``paths`` in turn, each from its own offset, for ``seconds`` (bounded in time, and
    only to ``base``, an address on this machine): tiles, tiles/s, p50/p99 ms, non-200 answers."""
    host, port = base.split("//")[1].split(":")
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        mine, bad, i = [], 0, k * 997
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            conn.request("GET", paths[i % len(paths)])
            r = conn.getresponse()
            r.read()
            mine.append(time.perf_counter() - t0)
            bad += r.status != 200
            i += 1
        conn.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"tiles": len(lat), "per_s": len(lat) / wall, "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))], "errors": errors[0]}
