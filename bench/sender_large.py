"""Sending a large attachment: memory and throughput of the sender SDK.

    .venv/bin/python bench/sender_large.py [--size-mb 1000] [--parts 1] [--dir DIR] [--keep]

Starts our Zustelldienst as a **separate process** (SQLite and filesystem blobs in a temporary
directory, workers off), seeds a sender client and a destination (fresh RSA-4096 keys), creates
the attachment as a **sparse file** of ``--size-mb`` MB (10^6 bytes; nothing is generated in or
read into memory up front) and sends it with ``AsyncSender.send`` — destination checks,
announce, streaming encryption + upload with the exact ``Content-Length``, submit — then
confirms with ``status()`` that the Zustelldienst's ``submit-submission`` carries exactly the
authentication tags that were sent.

FIT-Connect allows 500 MB per attachment, measured on the *encrypted* body (≈ 4/3 of the
plaintext), and 2 GB per submission. A 1 GB attachment (``--parts 1``, the default) is above
that, so the bench raises the server's and the SDK's limits to what the run needs and says so;
``--parts 3`` sends the same bytes as three attachments of ~333 MB (~444 MB encrypted each),
within FIT-Connect's standard limits.

Measured in this (the sender's) process: wall time of ``send`` (throughput in plaintext and
encrypted MB/s) and the **peak RSS growth** during ``send`` over the RSS right before it
(after imports, token, destination check) — on Linux exactly (the kernel's peak counter VmHWM is
reset before the send), cross-checked by a psutil sampling thread, which also samples the server
process. Target: sender peak RSS growth < 64 MiB whatever the size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _support import RssMeter, seed_destination, wait_ready, zd_settings

TARGET_RSS_MIB = 64.0
MB = 1_000_000
MIB = 1 << 20
CONTENT_TYPE = "application/octet-stream"


class Sampler(threading.Thread):
    """Samples the RSS of some processes every ``interval`` seconds (psutil)."""

    def __init__(self, pids: Sequence[int], interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        import psutil

        self._procs = [psutil.Process(pid) for pid in pids]
        self.baselines = [p.memory_info().rss for p in self._procs]
        self.peaks = list(self.baselines)
        self.samples = 0
        self._interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for i, proc in enumerate(self._procs):
                self.peaks[i] = max(self.peaks[i], proc.memory_info().rss)
            self.samples += 1
            self._stop_event.wait(self._interval)

    def stop(self) -> list[int]:
        self._stop_event.set()
        self.join()
        return [peak - base for peak, base in zip(self.peaks, self.baselines, strict=True)]


def split(total: int, parts: int) -> list[int]:
    base, rest = divmod(total, parts)
    return [base + (1 if i < rest else 0) for i in range(parts)]


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk space (and no memory) to create."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


async def send(
    base_url: str,
    seeded: dict[str, Any],
    files: Sequence[Path],
    limits: Any,
    server_pid: int,
    encrypted_total: int,
) -> dict[str, Any]:
    from fitconnect_kit.client import AsyncSender, Credentials, Environment, SubmissionBuilder
    from fitconnect_kit.demo import DEMO_JSON_SCHEMA_URI, DEMO_SERVICE_IDENTIFIER, demo_json_data

    builder = (
        SubmissionBuilder(seeded["destination_id"])
        .service(DEMO_SERVICE_IDENTIFIER, "Testantrag")
        .json_data(demo_json_data(), schema_uri=DEMO_JSON_SCHEMA_URI)
    )
    for path in files:
        builder.attachment(path, purpose="attachment", mime_type=CONTENT_TYPE)
    submission = builder.build()
    uploaded: dict[str, int] = {}
    next_report = [0.25]

    def progress(attachment_id: str, done: int, _attachment_total: int) -> None:
        uploaded[attachment_id] = done
        share = sum(uploaded.values()) / encrypted_total
        if share >= next_report[0]:
            print(f"  {share:4.0%} uploaded", flush=True)
            next_report[0] += 0.25

    async with AsyncSender(
        Environment.local(base_url), Credentials(*seeded["sender"]), limits=limits, timeout=600
    ) as sender:
        # Warm-up outside the measurement: token, connection, destination and key checks.
        await sender.check_destination(
            seeded["destination_id"],
            service=DEMO_SERVICE_IDENTIFIER,
            data_schema=(DEMO_JSON_SCHEMA_URI, "application/json"),
        )
        meter = RssMeter()
        sampler = Sampler([os.getpid(), server_pid])
        meter.start()
        sampler.start()
        start = time.perf_counter()
        sent = await sender.send(submission, progress=progress)
        seconds = time.perf_counter() - start
        growth = meter.growth()
        sampled_growth, server_growth = sampler.stop()
        report = await sender.status(sent)
    return {
        "seconds": seconds,
        "rss_baseline": meter.baseline,
        "rss_growth": growth,
        "rss_growth_sampled": sampled_growth,
        "server_rss_growth_sampled": server_growth,
        "samples": sampler.samples,
        "encrypted_bytes": sum(uploaded.values()),
        "status": report.status.value,
        "tags_match": report.authentication_tags == sent.authentication_tags,
        "submission_id": sent.submission_id,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size-mb", type=int, default=1000, help="plaintext size in MB (10^6 bytes)"
    )
    parser.add_argument("--parts", type=int, default=1, help="split into this many attachments")
    parser.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.size_mb < 1 or args.parts < 1:
        parser.error("--size-mb and --parts must be positive")

    from fitconnect_kit.client.sender import Limits
    from fitconnect_kit.protocol import api
    from fitconnect_kit.protocol.jose import jwe
    from fitconnect_kit.protocol.keygen import generate_key_set
    from fitconnect_kit.server.config import config_from_mapping

    size = args.size_mb * MB
    sizes = split(size, args.parts)
    work = Path(tempfile.mkdtemp(prefix="fitconnect-bench-sender-", dir=args.dir))
    server: subprocess.Popen[bytes] | None = None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        print("generating the destination's keys (RSA-4096) ...")
        keys = generate_key_set()
        kid = keys.encryption_kid
        encrypted = [jwe.compact_length(n, kid=kid, cty=CONTENT_TYPE, key_bytes=512) for n in sizes]
        max_attachment = max(api.LIMIT_MAX_ATTACHMENT_BYTES, max(encrypted))
        max_total = max(api.LIMIT_MAX_TOTAL_ATTACHMENT_BYTES, sum(encrypted))
        raised = (
            max_attachment > api.LIMIT_MAX_ATTACHMENT_BYTES
            or max_total > api.LIMIT_MAX_TOTAL_ATTACHMENT_BYTES
        )
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        base_url = f"http://127.0.0.1:{port}"
        settings = zd_settings(
            port,
            work / "zd",
            max_attachment=max_attachment,
            max_submission=max_total,
            blob_store="filesystem",
        )
        config_file = work / "zd.json"
        config_file.write_text(json.dumps(settings), encoding="utf-8")
        seeded = asyncio.run(seed_destination(config_from_mapping(settings), keys))
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fitconnect_kit.server",
                "--config",
                str(config_file),
                "--fd",
                str(sock.fileno()),
            ],
            pass_fds=(sock.fileno(),),
            stdout=subprocess.DEVNULL,
        )
        wait_ready(base_url, server)
        print(f"Zustelldienst (pid {server.pid}) on {base_url}, SQLite + files in {work}")
        if raised:
            print(
                f"limits raised above FIT-Connect's 500 MB / 2 GB (encrypted): "
                f"{max_attachment} bytes per attachment, {max_total} per submission"
            )
        files = [sparse_file(work / f"part-{i}.bin", n) for i, n in enumerate(sizes)]
        print(
            f"sending {args.size_mb} MB in {args.parts} attachment(s) (sparse file source) ...",
            flush=True,
        )
        result = asyncio.run(
            send(
                base_url,
                seeded,
                files,
                Limits(max_attachment_bytes=max_attachment, max_total_attachment_bytes=max_total),
                server.pid,
                sum(encrypted),
            )
        )
        stored = sum(p.stat().st_size for p in (work / "zd" / "blobs").rglob("*") if p.is_file())
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        sock.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    seconds = result["seconds"]
    growth_mib = result["rss_growth"] / MIB
    ok = (
        result["status"] == "submitted"
        and result["tags_match"]
        and result["encrypted_bytes"] == sum(encrypted)
        and stored == sum(encrypted)
        and growth_mib < TARGET_RSS_MIB
    )
    print()
    print(
        f"attachments           {args.parts} × {sizes[0] / MB:.1f} MB plaintext "
        f"= {size / MB:.0f} MB"
    )
    print(
        f"encrypted (uploaded)  {sum(encrypted) / MB:.1f} MB "
        f"(largest attachment {max(encrypted) / MB:.1f} MB; "
        f"{'limits RAISED above' if raised else 'within'} FIT-Connect's 500 MB / 2 GB)"
    )
    print(
        f"send()                {seconds:7.1f} s   {size / MB / seconds:6.1f} MB/s plaintext, "
        f"{sum(encrypted) / MB / seconds:6.1f} MB/s on the wire"
    )
    print(
        f"sender peak RSS growth {growth_mib:6.1f} MiB (VmHWM; psutil sampled "
        f"{result['rss_growth_sampled'] / MIB:.1f} MiB in {result['samples']} samples; "
        f"RSS before send {result['rss_baseline'] / MIB:.0f} MiB) — target < "
        f"{TARGET_RSS_MIB:.0f} MiB: {'ok' if growth_mib < TARGET_RSS_MIB else 'MISSED'}"
    )
    print(f"server peak RSS growth {result['server_rss_growth_sampled'] / MIB:6.1f} MiB (sampled)")
    print(f"stored by the server  {stored / MB:.1f} MB in blobs")
    print(
        f"status                {result['status']}, submit-submission tags "
        f"{'match' if result['tags_match'] else 'DIFFER'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
