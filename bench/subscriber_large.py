"""Receiving a large attachment: throughput and memory of the subscriber SDK.

    .venv/bin/python bench/subscriber_large.py [--size-mib 1024] [--dir DIR] [--keep]

Starts our Zustelldienst as a separate process on SQLite in a temporary directory (attachment
limits raised for the size asked for — FIT-Connect itself allows 500 MB per attachment), seeds
a sender, a destination and a subscriber, writes a random file of ``--size-mib`` MiB and sends
it with the sender SDK (streaming upload). Then a **fresh subprocess** receives it with the
subscriber SDK — ``process()``: fetch, event log, streamed download with decryption into a
file (SHA-512 in the same pass), all §11 checks, ``accept-submission`` — and reports its wall
time and its peak RSS growth over its own RSS after imports and key loading (Linux: the
kernel's peak counter is reset at the start, so the figure is exact).

Throughput is plaintext bytes per second (MB = 10^6 bytes). Target: peak RSS growth of the
receiving process < 64 MiB whatever the size.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _support import RssMeter, free_port, seed_destination, wait_ready, zd_settings

TARGET_RSS_MIB = 64.0
CHUNK = 1 << 20


# --- the receiving subprocess ---------------------------------------------------------------------


def receive_main(spec_path: Path) -> None:
    """Receive the submission described in ``spec.json``; print a JSON result line."""
    from fitconnect_kit.client import AsyncSubscriber, Credentials, Environment
    from fitconnect_kit.client.keystore import DecryptionKeys, SigningKey
    from fitconnect_kit.client.schemas import SchemaRegistry

    spec = json.loads(spec_path.read_text())
    keys = DecryptionKeys.load(spec["encryption_private"])
    signing = SigningKey.from_jwk(spec["signing_private"])
    schemas = SchemaRegistry().add_demo_schemas()
    out_dir = Path(spec["out_dir"])

    async def run() -> dict[str, Any]:
        async with AsyncSubscriber(
            Environment.local(spec["base_url"]),
            Credentials(spec["client_id"], spec["client_secret"]),
            decryption_keys=keys,
            signing_key=signing,
            schemas=schemas,
        ) as subscriber:
            await subscriber.get_destination(spec["destination_id"])  # warm-up: connection
            meter = RssMeter()
            meter.start()
            start = time.perf_counter()
            received = await subscriber.process(spec["submission_id"], out_dir)
            seconds = time.perf_counter() - start
            growth = meter.growth()
        (attachment,) = received.attachments
        return {
            "seconds": seconds,
            "rss_growth": growth,
            "verdict": received.verdict.value,
            "decision": received.decision.name if received.decision else None,
            "sha512": attachment.sha512,
            "size": attachment.size,
        }

    print(json.dumps(asyncio.run(run())))


# --- orchestration --------------------------------------------------------------------------------


def _write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha512()
    left = size
    with path.open("wb") as handle:
        while left:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            handle.write(block)
            left -= len(block)
    return digest.hexdigest()


async def _send(base_url: str, seed: dict[str, Any], path: Path, limit: int) -> tuple[Any, float]:
    from fitconnect_kit.client import AsyncSender, Credentials, Environment, SubmissionBuilder
    from fitconnect_kit.client.sender import Limits
    from fitconnect_kit.demo import DEMO_JSON_SCHEMA_URI, DEMO_SERVICE_IDENTIFIER, demo_json_data

    submission = (
        SubmissionBuilder(seed["destination_id"])
        .service(DEMO_SERVICE_IDENTIFIER, "Testantrag")
        .json_data(demo_json_data(), schema_uri=DEMO_JSON_SCHEMA_URI)
        .attachment(path, purpose="attachment", mime_type="application/octet-stream")
        .build()
    )
    limits = Limits(max_attachment_bytes=limit, max_total_attachment_bytes=limit)
    async with AsyncSender(
        Environment.local(base_url), Credentials(*seed["sender"]), limits=limits, timeout=600
    ) as sender:
        start = time.perf_counter()
        sent = await sender.send(submission)
        return sent, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="attachment size (MiB)")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--receive", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive is not None:
        receive_main(args.receive)
        return 0

    from fitconnect_kit.protocol.keygen import generate_key_set
    from fitconnect_kit.server.config import config_from_mapping

    size = args.size_mib * 1024 * 1024
    work = Path(tempfile.mkdtemp(prefix="fitconnect-bench-", dir=args.dir))
    server: subprocess.Popen[bytes] | None = None
    try:
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        limit = size * 4 // 3 + 10 * 1024 * 1024  # the encrypted size plus headroom
        settings = zd_settings(port, work / "zd", max_attachment=limit, max_submission=limit)
        config_file = work / "zd.json"
        config_file.write_text(json.dumps(settings))
        config = config_from_mapping(settings)
        print(f"work directory {work}; seeding and starting the Zustelldienst on {base_url}")
        seed = asyncio.run(seed_destination(config, generate_key_set(), with_subscriber=True))
        server = subprocess.Popen(
            [sys.executable, "-m", "fitconnect_kit.server", "--config", str(config_file)],
            stdout=subprocess.DEVNULL,
        )
        wait_ready(base_url, server)

        plain = work / "attachment.bin"
        print(f"writing {args.size_mib} MiB of random data ...")
        expected = _write_random_file(plain, size)
        print("sending (sender SDK, streaming upload) ...")
        sent, send_seconds = asyncio.run(_send(base_url, seed, plain, limit))
        plain.unlink()  # not needed any more: keep disk use down

        keys = seed["keys"]
        spec = {
            "base_url": base_url,
            "client_id": seed["subscriber"][0],
            "client_secret": seed["subscriber"][1],
            "destination_id": seed["destination_id"],
            "submission_id": sent.submission_id,
            "encryption_private": keys.encryption_private,
            "signing_private": keys.signing_private,
            "out_dir": str(work / "received"),
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        print(
            "receiving in a fresh process (subscriber SDK: download, decrypt, verify, accept) ..."
        )
        done = subprocess.run(
            [sys.executable, __file__, "--receive", str(spec_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        mb = size / 1e6
        rss_mib = result["rss_growth"] / (1024 * 1024)
        ok = (
            result["sha512"] == expected
            and result["size"] == size
            and result["verdict"] == "valid"
            and result["decision"] == "accept-submission"
        )
        print()
        print(f"attachment            {args.size_mib} MiB ({mb:.0f} MB)")
        print(f"send (upload)         {send_seconds:7.1f} s  {mb / send_seconds:7.1f} MB/s")
        print(
            f"receive (process)     {result['seconds']:7.1f} s  {mb / result['seconds']:7.1f} MB/s"
        )
        print(
            f"peak RSS growth       {rss_mib:7.1f} MiB  (target < {TARGET_RSS_MIB:.0f} MiB: "
            f"{'ok' if rss_mib < TARGET_RSS_MIB else 'MISSED'})"
        )
        print(f"verdict / decision    {result['verdict']} / {result['decision']}")
        print(f"plaintext SHA-512     {'matches' if result['sha512'] == expected else 'DIFFERS'}")
        return 0 if ok and rss_mib < TARGET_RSS_MIB else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
