"""Uploading a large attachment to our Zustelldienst: memory and throughput of the *server*.

    .venv/bin/python bench/server_upload.py [--size-mb 500] [--blob-store filesystem|postgres]
                                            [--dir DIR] [--keep]

Starts the Zustelldienst as a separate process (SQLite and the file blob store in a temporary
directory, or ``--blob-store postgres``: a fresh PostgreSQL database at 127.0.0.1:5432 holding
data and blobs; rate limits raised, workers off), seeds a sender and a destination, announces a
submission with one attachment and uploads a syntactically valid JWE of ``--size-mb`` MB (10^6
bytes) as its body: RSA-OAEP-256 + A256GCM for the destination's key, encrypted while it is sent
(``protocol.jose.jwe_stream.iter_encrypt``: never in memory whole) in one streaming HTTP
request with an exact ``Content-Length``.

The server's RSS is sampled (psutil, every 20 ms) from just before the upload to its end; on
Linux the kernel's peak counter of the server process (VmHWM) is reset before the upload, so the
reported peak is exact. Figures: baseline RSS, peak RSS, growth (target < 64 MiB whatever the
size), throughput of the upload (body bytes per second, MB = 10^6 bytes; the client encrypts in
the same process, so this is a lower bound of what the server takes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from _support import free_port, seed_destination, wait_ready, zd_settings

TARGET_GROWTH_MIB = 64.0
MIB = 1024 * 1024
SERVICE_IDENTIFIER = "urn:de:fim:leika:leistung:99123456760610"
PG_ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "database": "postgres"}


# --- the server process ---------------------------------------------------------------------------


async def _pg_execute(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(**PG_ADMIN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def _postgres_database() -> Iterator[str]:
    name = "fck_bench_" + secrets.token_hex(4)
    asyncio.run(_pg_execute(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_ADMIN['user']}@{PG_ADMIN['host']}:{PG_ADMIN['port']}/{name}"
    finally:
        asyncio.run(_pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- measuring ------------------------------------------------------------------------------------


class RssSampler:
    """Samples another process's RSS in a thread; exact peak via VmHWM on Linux."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _status(self, field: str) -> int | None:
        try:
            with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def start(self) -> int:
        """Reset the kernel's peak counter (if possible), start sampling; returns the baseline."""
        with contextlib.suppress(OSError):
            with open(f"/proc/{self.process.pid}/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")
            self.hwm_reset = True
        baseline = int(self.process.memory_info().rss)
        self.samples.append(baseline)
        self._thread.start()
        return baseline

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append(int(self.process.memory_info().rss))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        """Stop sampling; returns the peak RSS (the kernel's, when it could be reset)."""
        self._stop.set()
        self._thread.join()
        peak = max(self.samples)
        if self.hwm_reset:
            hwm = self._status("VmHWM")
            if hwm is not None:
                peak = max(peak, hwm)
        return peak


def _plaintext_length_for(body_size: int, key: Any) -> int:
    """The largest plaintext whose compact JWE is at most ``body_size`` bytes."""
    from fitconnect_kit.protocol.jose.jwe_stream import iter_encrypt

    def token_length(plaintext: int) -> int:
        iterator = iter_encrypt(iter(()), key, cty="application/pdf", plaintext_length=plaintext)
        length = iterator.length
        iterator.close()
        assert length is not None
        return length

    low, high = 0, body_size
    while low < high:
        middle = (low + high + 1) // 2
        if token_length(middle) <= body_size:
            low = middle
        else:
            high = middle - 1
    return low


def _plaintext(length: int) -> Iterator[bytes]:
    block = os.urandom(MIB)
    left = length
    while left:
        piece = block[: min(MIB, left)]
        left -= len(piece)
        yield piece


def upload(base_url: str, seed: dict[str, Any], size: int, server_pid: int) -> dict[str, Any]:
    from fitconnect_kit.protocol.ids import new_id
    from fitconnect_kit.protocol.jose.jwe_stream import iter_encrypt

    client_id, client_secret = seed["sender"]
    key = seed["keys"].encryption_public
    with httpx.Client(base_url=base_url, timeout=httpx.Timeout(600, connect=10)) as http:
        token = http.post(
            "/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": client_secret,
            },
        ).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        attachment_id = new_id()
        announced = http.post(
            "/v1/submissions",
            json={
                "destinationId": seed["destination_id"],
                "announcedAttachments": [attachment_id],
                "serviceType": {
                    "name": "Bench",
                    "identifier": SERVICE_IDENTIFIER,
                },
            },
            headers=auth,
        )
        announced.raise_for_status()
        submission_id = announced.json()["submissionId"]

        plaintext_length = _plaintext_length_for(size, key)
        body = iter_encrypt(
            _plaintext(plaintext_length),
            key,
            cty="application/pdf",
            plaintext_length=plaintext_length,
        )
        assert body.length is not None
        time.sleep(0.5)  # let the server settle after the small requests
        sampler = RssSampler(server_pid)
        baseline = sampler.start()
        started = time.perf_counter()
        response = http.put(
            f"/v1/submissions/{submission_id}/attachments/{attachment_id}",
            content=body,
            headers={
                **auth,
                "Content-Type": "application/jose",
                "Content-Length": str(body.length),
            },
        )
        seconds = time.perf_counter() - started
        peak = sampler.stop()
        if response.status_code != 204:
            raise RuntimeError(f"upload refused: {response.status_code} {response.text[:500]}")
        return {
            "body_bytes": body.length,
            "plaintext_bytes": plaintext_length,
            "seconds": seconds,
            "baseline": baseline,
            "peak": peak,
            "samples": len(sampler.samples),
            "exact_peak": sampler.hwm_reset,
        }


# --- orchestration --------------------------------------------------------------------------------


def run(size: int, blob_store: str, work: Path) -> dict[str, Any]:
    from fitconnect_kit.protocol.keygen import generate_key_set
    from fitconnect_kit.server.config import config_from_mapping

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        settings = zd_settings(
            port,
            work / "zd",
            max_attachment=size,
            max_submission=size,
            rate_limit={"burst": 100_000, "anonymous_burst": 100_000},
        )
        if blob_store == "postgres":
            settings["database_url"] = stack.enter_context(_postgres_database())
            settings["blob_store"] = "postgres"
        config_file = work / "zd.json"
        config_file.write_text(json.dumps(settings))
        config = config_from_mapping(settings)
        seed = asyncio.run(
            seed_destination(
                config,
                generate_key_set(),
                service_identifier=SERVICE_IDENTIFIER,
                schema_uri="https://schema.fitko.de/fim/s00000000009_1.0.0.schema.json",
            )
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "fitconnect_kit.server", "--config", str(config_file)],
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_ready(base_url, server, timeout=120)
            return upload(base_url, seed, size, server.pid)
        finally:
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=500, help="JWE body size (MB = 10^6 B)")
    parser.add_argument("--blob-store", choices=["filesystem", "postgres"], default="filesystem")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()

    size = args.size_mb * 1_000_000
    work = Path(tempfile.mkdtemp(prefix="fitconnect-upload-bench-", dir=args.dir))
    try:
        database = "SQLite" if args.blob_store == "filesystem" else "PostgreSQL"
        print(
            f"uploading a {args.size_mb} MB JWE to a Zustelldienst process "
            f"({database}, {args.blob_store} blob store; work directory {work}) ..."
        )
        result = run(size, args.blob_store, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    growth_mib = (result["peak"] - result["baseline"]) / MIB
    ok = growth_mib < TARGET_GROWTH_MIB
    print()
    print(f"blob store            {args.blob_store}")
    print(
        f"attachment body       {result['body_bytes']:,} bytes JWE "
        f"({result['plaintext_bytes']:,} bytes plaintext)"
    )
    print(f"server RSS baseline   {result['baseline'] / MIB:7.1f} MiB")
    exact = "kernel peak counter" if result["exact_peak"] else "sampled"
    samples = result["samples"]
    print(f"server RSS peak       {result['peak'] / MIB:7.1f} MiB  ({exact}, {samples} samples)")
    print(
        f"server RSS growth     {growth_mib:7.1f} MiB  (target < {TARGET_GROWTH_MIB:.0f} MiB: "
        f"{'ok' if ok else 'MISSED'})"
    )
    mb_s = result["body_bytes"] / 1e6 / result["seconds"]
    print(f"upload                {result['seconds']:7.1f} s  {mb_s:7.1f} MB/s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
