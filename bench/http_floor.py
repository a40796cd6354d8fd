"""The CPU floor of one HTTP request on this machine's Python stack (uvicorn + httpx).

    .venv/bin/python bench/http_floor.py [--requests 4000] [--concurrency 16]

Starts uvicorn (same loop and HTTP parser choice as ``fitconnect dev``: uvloop and httptools
when installed) in a process of its own, serving a raw ASGI app that answers every request with
a fixed 2-byte JSON body — no framework, no routing, no database, no authentication. This
process sends ``--requests`` GETs from ``--concurrency`` ``httpx.AsyncClient`` instances with
one keep-alive connection each (as many SDK instances do) and measures the CPU both processes
spend per request (user + system, psutil). The sum is what any request costs at least on this
stack; ``bench/e2e.py`` multiplies it by the requests one FIT-Connect round trip needs to show
how far the physical RSA limit is reachable at all.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from _support import free_port, wait_ready

#: The requests one round trip needs at least, by the protocol (dev topology, callbacks on).
PROTOCOL_REQUESTS = {
    "sender: announce (POST /v1/submissions)": 1,
    "sender: upload the attachment (PUT …/attachments/{id})": 1,
    "sender: submit (PUT /v1/submissions/{id})": 1,
    "sender: read the case events once (GET /v1/cases/{id}/events)": 1,
    "ZD → subscriber: NEW_SUBMISSIONS callback (POST)": 1,
    "subscriber: list submissions (GET /v1/submissions)": 1,
    "subscriber: fetch the submission (GET /v1/submissions/{id})": 1,
    "subscriber: download the attachment (GET …/attachments/{id})": 1,
    "subscriber: read the case events (GET /v1/cases/{id}/events)": 1,
    "subscriber: accept (POST /v1/cases/{id}/events)": 1,
}


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer every HTTP request with ``{}`` (and ignore lifespan)."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


def serve(port: int) -> None:
    import uvicorn

    uvicorn.run(_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@dataclass(frozen=True)
class HttpFloor:
    requests: int
    server_ms: float  # CPU of the server process per request
    client_ms: float  # CPU of the client (this process) per request
    seconds: float

    @property
    def per_request_ms(self) -> float:
        return self.server_ms + self.client_ms


async def _drive(base_url: str, requests: int, concurrency: int) -> None:
    """``concurrency`` clients, one keep-alive connection each (like one SDK instance each)."""
    import httpx

    remaining = requests
    headers = {"Authorization": "Bearer " + "x" * 600}  # about an access token's size

    async def one_client() -> None:
        nonlocal remaining
        async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:
            while remaining > 0:
                remaining -= 1
                response = await client.get("/v1/info")
                response.raise_for_status()
                response.json()

    await asyncio.gather(*(one_client() for _ in range(concurrency)))


def measure_http_floor(requests: int = 4000, concurrency: int = 16) -> HttpFloor:
    """CPU per request of a do-nothing ASGI app on uvicorn, driven by httpx (both processes)."""
    import psutil

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url, server)
        asyncio.run(_drive(base_url, min(500, requests), concurrency))  # warm up
        server_proc, me = psutil.Process(server.pid), psutil.Process()
        server_before, me_before = server_proc.cpu_times(), me.cpu_times()
        started = time.perf_counter()
        asyncio.run(_drive(base_url, requests, concurrency))
        seconds = time.perf_counter() - started
        server_after, me_after = server_proc.cpu_times(), me.cpu_times()
    finally:
        server.terminate()
        server.wait(timeout=10)

    def cpu(after: Any, before: Any) -> float:
        return float((after.user - before.user) + (after.system - before.system))

    return HttpFloor(
        requests=requests,
        server_ms=1000 * cpu(server_after, server_before) / requests,
        client_ms=1000 * cpu(me_after, me_before) / requests,
        seconds=seconds,
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    floor = measure_http_floor(args.requests, args.concurrency)
    print(
        f"{floor.requests} requests in {floor.seconds:.2f} s "
        f"({floor.requests / floor.seconds:.0f}/s): CPU per request server "
        f"{floor.server_ms:.3f} ms + client {floor.client_ms:.3f} ms = "
        f"{floor.per_request_ms:.3f} ms"
    )


if __name__ == "__main__":
    main()
