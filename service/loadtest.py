"""``sweetspot bench api``: throughput and latency of ``GET /v1/sweet-spots`` under load.

N concurrent clients (raw asyncio HTTP/1.1 keep-alive connections) request the same prediction
for a fixed duration after a warm-up; prints JSON with requests/s and latency percentiles.
Without ``--url`` it starts ``sweetspot serve --workers 0`` on a free local port with a
throw-away data directory, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="a running service (default: start one)")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--hardware", default="xeon-e5-2697v4")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--token", help="API token, if the service needs one")


async def _client(host: str, port: int, request: bytes, deadline: float,
                  latencies: list[float], errors: dict[str, int]) -> None:  # fmt: skip
    """One keep-alive HTTP/1.1 connection sending ``request`` until ``deadline``.

    A raw asyncio client (read the headers, then Content-Length bytes) so that the load
    generator costs far less CPU than the server it measures: both share this machine.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
                continue
            latencies.append(time.perf_counter() - start)
    except (OSError, asyncio.IncompleteReadError, ValueError) as error:
        errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
    finally:
        writer.close()


async def _load(url: str, params: dict, headers: dict, clients: int, seconds: float) -> dict:
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    lines = [f"GET /v1/sweet-spots?{urlencode(params)} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies: list[float] = []
    errors: dict[str, int] = {}
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(_client(host, port, request, deadline, latencies, errors)
                           for _ in range(clients)))  # fmt: skip
    elapsed = time.perf_counter() - started
    latencies.sort()

    def percentile(p: float) -> float | None:
        if not latencies:
            return None
        return 1e3 * latencies[min(int(p * len(latencies)), len(latencies) - 1)]

    return {
        "requests": len(latencies), "errors": errors, "seconds": elapsed,
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(0.50), "p90_ms": percentile(0.90), "p99_ms": percentile(0.99),
        "mean_ms": 1e3 * statistics.fmean(latencies) if latencies else None,
    }  # fmt: skip


def _start_server(hardware: str) -> tuple[subprocess.Popen, str, tempfile.TemporaryDirectory]:
    import httpx

    from perfmodel import ProfileError, get_profile, save_profile
    from perfmodel.hardware import is_builtin_profile

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = tempfile.TemporaryDirectory(prefix="sweetspot-bench-")
    # The service reads profiles from its own data folder: give it the user's (e.g. host).
    if not is_builtin_profile(hardware):
        # an unknown or broken one: the probe request reports it, as the service words it
        with contextlib.suppress(LookupError, ProfileError):
            save_profile(get_profile(hardware), Path(data.name) / "profiles")
    env = {**os.environ, "SWEETSPOT_DATA_DIR": data.name}
    binary = Path(sys.executable).parent / "sweetspot"
    process = subprocess.Popen(
        [str(binary), "serve", "--port", str(port), "--workers", "0"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url, data
        except httpx.TransportError:
            time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the service did not start within 30 s")


def _probe(url: str, params: dict, headers: dict) -> str | None:
    """Why the load would only count errors (the service unreachable, or answering the
    request with an error), or None when one request succeeds."""
    import httpx

    try:
        response = httpx.get(f"{url}/v1/sweet-spots", params=params, headers=headers, timeout=30)
    except httpx.HTTPError as error:
        return f"cannot reach the service at {url}: {error}"
    if response.status_code != 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
        return f"the service answered {response.status_code}: {str(detail)[:300]}"
    return None


def run(args: argparse.Namespace) -> int:
    # NaN fails every comparison; infinity would run forever.
    for ok, rule, value in ((args.concurrency >= 1, "--concurrency must be >= 1", args.concurrency),
                            (0 < args.duration < math.inf, "--duration must be > 0 and finite",
                             args.duration),
                            (0 <= args.warmup < math.inf, "--warmup must be >= 0 and finite",
                             args.warmup)):  # fmt: skip
        if not ok:
            print(f"sweetspot: {rule}, got {value}", file=sys.stderr)
            return 2
    server = None
    url = args.url
    if url is None:
        server, url, data = _start_server(args.hardware)
    try:
        params = {"model": args.model, "hardware": args.hardware}
        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        problem = _probe(url, params, headers)
        if problem:
            print(f"sweetspot: {problem}", file=sys.stderr)
            return 1
        asyncio.run(_load(url, params, headers, args.concurrency, args.warmup))
        result = asyncio.run(_load(url, params, headers, args.concurrency, args.duration))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
            data.cleanup()
    print(json.dumps({"endpoint": "GET /v1/sweet-spots", **params,
                      "concurrency": args.concurrency, **result}, indent=2))  # fmt: skip
    return 0 if not result["errors"] else 1
