"""End-to-end throughput of the local stack against the machine's RSA capacity.

    .venv/bin/python bench/e2e.py [--database sqlite|postgres|both] [--senders 16]
        [--duration 30] [--warmup 8] [--attachment-bytes 4096] [--count-rsa]
        [--topology dev|split|both] [--zd-processes 2] [--blob-store filesystem|postgres]
        [--pg-url postgresql://postgres@127.0.0.1:5432] [--py-spy DIR] [--keep]

For each database, starts a **fresh** ``fitconnect dev`` as a separate process, the way a user
starts it (``.venv/bin/fitconnect dev --port 0 --quiet``), on a temporary data directory with a
temporary ``$XDG_CONFIG_HOME``; for PostgreSQL a fresh database ``fcbench_<hex>`` on
``--pg-url`` (``--database-url …`` plus files for the blobs), dropped afterwards. The **demo
Fachverfahren inside** ``fitconnect dev`` is the subscriber: a ``SubscriberWorker`` woken by
NEW_SUBMISSIONS callbacks, which decrypts, verifies every check of the reference (JSON Schema
included), stores the submission and posts ``accept-submission``.

This process runs ``--senders`` concurrent :class:`AsyncSender` loops (one SDK instance each,
from the ``local`` profile): build a small submission (the demo JSON Antrag and one attachment
of ``--attachment-bytes``), ``send()`` (destination check, announce, encrypted upload, submit),
then ``wait()`` until the status is final. A **round trip** is ``send()`` start → the sender's
verified report says ``accepted`` with matching authentication tags (anything else aborts the
run). Round trips completing inside the ``--duration`` window after ``--warmup`` seconds count.

Printed: round trips/s, p50/p99 latency, CPU of the server process (``fitconnect dev``: ZD and
demo Fachverfahren) and of this process (senders) per round trip, machine utilisation and idle
share before the run; then — in the same run — the machine's RSA-4096 private-key capacity with
``cryptography`` (PS512 sign and RSA-OAEP-256 decrypt, one process per core in parallel, and per
core), the RSA private-key operations one round trip needs (from the protocol; with
``--count-rsa`` also counted in the server process and in this process), the **physical limit**
= capacity / operations per round trip, and the ratio. Target: ≥ 70 % of the limit.

``--py-spy DIR`` records the server process (and this one) during the window with py-spy
(``pip install py-spy``; not a dependency of the project) and prints the top frames.

``--topology split`` (PostgreSQL only; an experiment, see :class:`SplitStack`) runs the same
workload against ``--zd-processes`` ``fitconnect serve`` processes on one fresh PostgreSQL
database — seeded with the dev stack's own code, the dev stack's server settings, one shared
data directory (file blobs, or ``--blob-store postgres``), the same ``base_url`` (``iss``) on
every node — with senders and subscriber spread over the nodes round-robin, and the demo
Fachverfahren's worker (polling, as with ``--subscriber bench``) in a process of its own. CPU is
printed per process. ``--topology both`` runs the dev topology, then the split one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _support import cpu_idle_percent, free_port, proc_stat, rsa_key_pem, wait_ready
from http_floor import PROTOCOL_REQUESTS, HttpFloor, measure_http_floor

#: All senders share the one sender client of the dev stack, whose token bucket (20 requests/s,
#: burst 200 by default) would measure the rate limit policy, not the stack: lifted for the run
#: (the limiter itself still runs).
RATE_LIMIT_ENV = {
    "FITCONNECT_SERVER_RATE_LIMIT__REQUESTS_PER_SECOND": "1000000",
    "FITCONNECT_SERVER_RATE_LIMIT__BURST": "1000000",
}
TARGET_RATIO = 0.70
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432"
#: Seconds between list calls of the bench's own subscriber when it found nothing.
BENCH_SUBSCRIBER_POLL = 0.05

# --- RSA private-key operations of one round trip, from the protocol ------------------------------
#
# ZD signs (PS512, zd-set-signing key) one SET per event it issues for the submission:
ZD_SETS = {
    "create-submission": 1,  # POST /v1/submissions
    "submit-submission": 1,  # PUT /v1/submissions/{id}
    "notify-submission (callback)": 1,  # NEW_SUBMISSIONS delivered to the Fachverfahren
    "notify-submission (polling)": 1,  # first list/fetch by the subscriber (NOTIFY_ON_POLLING)
}
# The subscriber unwraps the content key (RSA-OAEP-256) of each JWE it decrypts and signs its
# decision SET with the destination's signing key:
SUBSCRIBER_UNWRAPS = {"metadata": 1, "data": 1, "attachment": 1}
SUBSCRIBER_SETS = {"accept-submission": 1}
# Access tokens (PS512, token-signing key) are cached by the SDK for their lifetime (1800 s):
# one per client per 30 minutes, i.e. ~0 per round trip (measured below with --count-rsa).
# With ``--subscriber bench`` the destination has no callback: no notify-submission (callback).
NO_CALLBACK = "notify-submission (callback)"


def protocol_operations(subscriber: str) -> tuple[dict[str, int], int, int]:
    """(ZD SETs, signs, decrypts) of one round trip for the subscriber mode."""
    zd_sets = {k: v for k, v in ZD_SETS.items() if subscriber == "dev" or k != NO_CALLBACK}
    signs = sum(zd_sets.values()) + sum(SUBSCRIBER_SETS.values())
    return zd_sets, signs, sum(SUBSCRIBER_UNWRAPS.values())


# --- RSA capacity (fresh processes, all cores at once) --------------------------------------------


def rsa_worker(kind: str, pem_path: str, start_at: float, seconds: float) -> None:
    """Count private-key operations of ``kind`` between ``start_at`` and ``+seconds``."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(Path(pem_path).read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=hashes.SHA512.digest_size)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = key.public_key().encrypt(os.urandom(32), oaep)
    message = os.urandom(600)  # about the size of a SET's signing input

    def one() -> None:
        if kind == "sign":
            key.sign(message, pss, hashes.SHA512())
        else:
            key.decrypt(wrapped, oaep)

    one()
    while time.time() < start_at:
        time.sleep(0.005)
    end = start_at + seconds
    ops = 0
    while time.time() < end:
        one()
        ops += 1
    print(json.dumps({"ops": ops, "seconds": time.time() - start_at}))


def _run_rsa_workers(kind: str, processes: int, pem: Path, seconds: float) -> float:
    start_at = time.time() + 1.5  # imports and key loading happen before
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--rsa-worker",
                kind,
                str(pem),
                repr(start_at),
                repr(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate()
        result = json.loads(out.strip().splitlines()[-1])
        total += result["ops"] / result["seconds"]
    return total


@dataclass
class RsaCapacity:
    cores: int
    sign_all: float
    decrypt_all: float
    sign_one: float
    decrypt_one: float

    def round_trips(self, signs: float, decrypts: float) -> float:
        """Round trips/s the machine could do if it did nothing but their RSA operations."""
        return 1.0 / (signs / self.sign_all + decrypts / self.decrypt_all)


def measure_rsa_capacity(seconds: float) -> RsaCapacity:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="fc-bench-rsa-") as tmp:
        pem = Path(tmp) / "key.pem"
        pem.write_bytes(rsa_key_pem())
        sign_all = _run_rsa_workers("sign", cores, pem, seconds)
        decrypt_all = _run_rsa_workers("decrypt", cores, pem, seconds)
        sign_one = _run_rsa_workers("sign", 1, pem, seconds)
        decrypt_one = _run_rsa_workers("decrypt", 1, pem, seconds)
    return RsaCapacity(cores, sign_all, decrypt_all, sign_one, decrypt_one)


# --- counting RSA private-key operations (debug mode of the dev process and of this one) ----------

_COUNTS: Counter[str] = Counter()
_COUNTS_LOCK = threading.Lock()


def install_rsa_counters() -> None:
    """Count every PS512 signature and every RSA-OAEP unwrap made through fitconnect_kit.

    Wraps ``jws.sign_compact`` and ``jwe._unwrap_cek`` — the only places where the package uses
    a private key — in every loaded ``fitconnect_kit`` module that bound them.
    """
    import fitconnect_kit.cli.main
    import fitconnect_kit.client.subscriber
    import fitconnect_kit.client.worker
    import fitconnect_kit.demo.fachverfahren
    import fitconnect_kit.devstack
    import fitconnect_kit.server.app
    import fitconnect_kit.server.auth
    import fitconnect_kit.server.workers.callbacks  # noqa: F401
    from fitconnect_kit.protocol.jose import jwe, jws

    if getattr(jws.sign_compact, "_counted", False):
        return  # installed already (a second run in this process)
    original_sign = jws.sign_compact
    original_unwrap = jwe._unwrap_cek

    def counted_sign(header: Any, payload: bytes, key: Any, **kwargs: Any) -> str:
        with _COUNTS_LOCK:
            _COUNTS[f"sign:{header.get('typ', '?')}:{header.get('kid', '?')}"] += 1
        return original_sign(header, payload, key, **kwargs)

    def counted_unwrap(key: Any, encrypted_key: bytes) -> bytes:
        with _COUNTS_LOCK:
            _COUNTS["decrypt"] += 1
        return original_unwrap(key, encrypted_key)

    counted_sign._counted = True  # type: ignore[attr-defined]
    _install_request_and_sql_counters()
    for name, module in list(sys.modules.items()):
        if not name.startswith("fitconnect_kit") or module is None:
            continue
        if getattr(module, "sign_compact", None) is original_sign:
            module.sign_compact = counted_sign  # type: ignore[attr-defined]
        if getattr(module, "_unwrap_cek", None) is original_unwrap:
            module._unwrap_cek = counted_unwrap  # type: ignore[attr-defined]


def _install_request_and_sql_counters() -> None:
    """Also count HTTP requests served by our ASGI apps and SQL statements sent."""
    from fastapi import FastAPI
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    original_call = FastAPI.__call__

    async def counted_call(self: Any, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            with _COUNTS_LOCK:
                _COUNTS["http requests served"] += 1
        await original_call(self, scope, receive, send)

    FastAPI.__call__ = counted_call  # type: ignore[method-assign]

    @event.listens_for(Engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:
        with _COUNTS_LOCK:
            _COUNTS["SQL statements"] += 1


def rsa_counts() -> dict[str, int]:
    with _COUNTS_LOCK:
        return dict(_COUNTS)


def _dump_counts_forever(counts_file: str) -> None:
    """Write this process's counts to ``counts_file`` every 0.2 s (daemon thread)."""

    def dump() -> None:
        tmp = counts_file + ".tmp"
        while True:
            with open(tmp, "w", encoding="utf-8") as out:
                json.dump(rsa_counts(), out)
            os.replace(tmp, counts_file)
            time.sleep(0.2)

    threading.Thread(target=dump, daemon=True).start()


def dev_wrapper_main(counts_file: str, argv: list[str]) -> None:
    """``fitconnect <argv>`` with RSA counters, writing the counts to ``counts_file``."""
    install_rsa_counters()
    _dump_counts_forever(counts_file)
    from fitconnect_kit.cli.main import main

    sys.argv = ["fitconnect", *argv]
    main(argv)


# --- the dev stack process ------------------------------------------------------------------------


class DevProcess:
    """``fitconnect dev`` in a fresh data directory, as a child process."""

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str | None,
        count_rsa: bool,
        with_subscriber: bool = True,
        blob_store: str = "filesystem",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "dev"
        self.log_path = workdir / "dev.log"
        self.counts_path = workdir / "rsa-counts.json"
        args = ["dev", "--port", "0", "--data-dir", str(self.data_dir), "--quiet"]
        if not with_subscriber:
            args.append("--no-subscriber")
        if database_url:
            args += ["--database-url", database_url, "--blob-store", blob_store]
        if count_rsa:
            command = [sys.executable, __file__, "--dev-wrapper", str(self.counts_path), *args]
        else:
            command = [str(Path(sys.executable).parent / "fitconnect"), *args]
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(workdir / "config"),
            **RATE_LIMIT_ENV,
            **(extra_env or {}),
        }
        env.pop("FITCONNECT_PROFILE", None)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.base_url = ""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def profile_path(self) -> Path:
        return self.data_dir / "profile.json"

    @property
    def sender_profiles(self) -> list[Path]:
        return [self.profile_path]

    def processes(self) -> dict[str, int]:
        return {"server": self.pid}

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        pattern = re.compile(r"Submission API\s+(http://\S+)/v1")
        while time.monotonic() < deadline:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            match = pattern.search(text)
            if match and "=" * 78 in text[match.end() :]:
                self.base_url = match.group(1)
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"fitconnect dev exited ({self.proc.returncode}):\n{text}")
            time.sleep(0.1)
        raise SystemExit("fitconnect dev did not start in time:\n" + self.output())

    def rsa_counts(self) -> dict[str, int]:
        try:
            data: dict[str, int] = json.loads(self.counts_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data

    def signer_names(self) -> dict[str, str]:
        """kid → who signs with it (the destination's signing key is the subscriber's)."""
        seed = json.loads((self.data_dir / "seed.json").read_text(encoding="utf-8"))
        return {str(seed.get("signingKid")): "subscriber"}

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


# --- the split topology: K Zustelldienst processes + the subscriber in its own process ------------


def node_profile(profile_path: Path, public_url: str, node_url: str, index: int) -> Path:
    """A copy of the ``local`` profile whose token and Submission API URLs name one node.

    Only where the client connects changes: every node has the same ``base_url`` (the ``iss`` of
    SETs and access tokens), and the SDK verifies ZD SETs with the JWKS of the node it talks to
    (all nodes share the server keys), without comparing ``iss`` with the URL it connects to.
    Written next to the original, so the relative key paths still resolve.
    """
    if node_url == public_url:
        return profile_path
    text = profile_path.read_text(encoding="utf-8")
    copy = profile_path.with_name(f"profile-node-{index}.json")
    copy.write_text(text.replace(f'"{public_url}/', f'"{node_url}/'), encoding="utf-8")
    copy.chmod(0o600)
    return copy


def subscriber_main(profile: str, workdir: str, counts_file: str) -> None:
    """``--subscriber-worker``: :func:`run_subscriber` in a process of its own until SIGTERM."""
    if counts_file:
        install_rsa_counters()
        _dump_counts_forever(counts_file)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_subscriber(Path(profile), Path(workdir), stop)

    asyncio.run(main())


class SplitStack:
    """``--topology split``: K ``fitconnect serve`` processes on one PostgreSQL database and the
    demo Fachverfahren's worker (polling, no callback) in a process of its own.

    Seeded in this process with the dev stack's own code (:meth:`DevStack.prepare`: clients,
    destination and its keys, ``seed.json``, ``profile.json``), so the data is the one
    ``fitconnect dev`` makes. Every node gets the dev stack's ``ServerConfig`` (test key policy,
    dev rate limits, workers on, same data directory and blob store) with its own port and the
    **same** ``base_url`` (node 1's URL: the ``iss`` of every SET and token). Senders and the
    subscriber connect to the nodes round-robin (per-node profile copies).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        database_url: str,
        nodes: int,
        blob_store: str,
        count_rsa: bool,
        senders: int,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        from fitconnect_kit.devstack import DevOptions, DevStack

        self.workdir = workdir
        self.data_dir = workdir / "dev"
        self.count_rsa = count_rsa
        ports: list[int] = []
        while len(ports) < nodes:
            port = free_port()
            if port not in ports:
                ports.append(port)
        stack = DevStack(
            DevOptions(
                port=ports[0],
                data_dir=self.data_dir,
                with_subscriber=False,
                quiet=True,
                register_profile=False,
                database_url=database_url,
                blob_store=blob_store,  # type: ignore[arg-type]
            )
        )
        self.data_dir.mkdir(mode=0o700, parents=True)
        info = asyncio.run(stack.prepare())
        self.public_url = info.base_url
        self.node_urls = [f"http://127.0.0.1:{port}" for port in ports]
        config = stack.server_config().model_dump(mode="json")
        env = {
            **os.environ,
            "XDG_CONFIG_HOME": str(workdir / "config"),
            **RATE_LIMIT_ENV,
            **(extra_env or {}),
        }
        env.pop("FITCONNECT_PROFILE", None)
        env.pop("FITCONNECT_CONFIG", None)
        self._logs: list[Any] = []
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.counts_paths: list[Path] = []
        for index, port in enumerate(ports):
            config_file = workdir / f"node-{index + 1}.json"
            config_file.write_text(json.dumps({**config, "port": port}), encoding="utf-8")
            args = ["serve", "--config", str(config_file)]
            counts = workdir / f"rsa-counts-node-{index + 1}.json"
            if count_rsa:
                command = [sys.executable, __file__, "--dev-wrapper", str(counts), *args]
                self.counts_paths.append(counts)
            else:
                command = [str(Path(sys.executable).parent / "fitconnect"), *args]
            log = (workdir / f"node-{index + 1}.log").open("wb")
            self._logs.append(log)
            self.nodes.append(
                subprocess.Popen(
                    command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        self.sender_profiles = [
            node_profile(info.profile_path, self.public_url, url, index + 1)
            for index, url in enumerate(self.node_urls)
        ]
        # The round robin of the senders goes on with the subscriber.
        self.subscriber_node = senders % nodes
        self.subscriber: subprocess.Popen[bytes] | None = None
        self._subscriber_env = env

    def wait_ready(self) -> None:
        for url, node in zip(self.node_urls, self.nodes, strict=True):
            try:
                wait_ready(url, node, timeout=180.0)
            except RuntimeError:
                raise SystemExit(f"node {url} did not start:\n{self.output()}") from None
        counts = self.workdir / "rsa-counts-subscriber.json"
        if self.count_rsa:
            self.counts_paths.append(counts)
        log = (self.workdir / "subscriber.log").open("wb")
        self._logs.append(log)
        self.subscriber = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--subscriber-worker",
                str(self.sender_profiles[self.subscriber_node]),
                str(self.workdir),
                str(counts) if self.count_rsa else "",
            ],
            cwd=self.workdir,
            env=self._subscriber_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def processes(self) -> dict[str, int]:
        pids = {f"zd-{i + 1}": node.pid for i, node in enumerate(self.nodes)}
        if self.subscriber is not None:
            pids["subscriber"] = self.subscriber.pid
        return pids

    def rsa_counts(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for path in self.counts_paths:
            with contextlib.suppress(OSError, ValueError):
                total.update(json.loads(path.read_text(encoding="utf-8")))
        return dict(total)

    def signer_names(self) -> dict[str, str]:
        seed = json.loads((self.data_dir / "seed.json").read_text(encoding="utf-8"))
        return {str(seed.get("signingKid")): "subscriber"}

    def output(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("*.log")):
            parts.append(f"--- {path.name}\n" + path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def stop(self) -> int:
        """Subscriber first (it may be finishing a submission), then the nodes."""
        status = 0
        procs = ([self.subscriber] if self.subscriber is not None else []) + self.nodes
        for group in (procs[:1], procs[1:]) if self.subscriber is not None else (procs,):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                status = status or proc.returncode
        for log in self._logs:
            log.close()
        return status


# --- PostgreSQL -----------------------------------------------------------------------------------


async def _pg_admin(pg_url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(pg_url.rstrip("/") + "/postgres")
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_pg_database(pg_url: str) -> tuple[str, str]:
    name = f"fcbench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(pg_url, f'CREATE DATABASE "{name}"'))
    base = pg_url.rstrip("/").replace("postgresql://", "postgresql+asyncpg://", 1)
    return name, f"{base}/{name}"


def drop_pg_database(pg_url: str, name: str) -> None:
    asyncio.run(_pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# --- the senders ----------------------------------------------------------------------------------


@dataclass
class LoadResult:
    completed: list[tuple[float, float]] = field(default_factory=list)  # (end time, latency)
    errors: list[str] = field(default_factory=list)
    http_requests: int = 0


async def run_subscriber(profile_path: Path, workdir: Path, stop: asyncio.Event) -> None:
    """The demo Fachverfahren's worker in this process (``--subscriber bench``): same SDK
    objects, schemas and concurrency, but polling (no callback endpoint here)."""
    from fitconnect_kit.client import AsyncSubscriber
    from fitconnect_kit.client.worker import SubscriberWorker
    from fitconnect_kit.demo import fachverfahren

    subscriber = AsyncSubscriber.from_config(
        "local",
        profile=profile_path,
        schemas=fachverfahren.demo_schema_registry(workdir / "schema-cache"),
    )
    worker = SubscriberWorker(
        subscriber,
        None,
        state_path=workdir / "bench-fachverfahren" / "state.sqlite3",
        out_dir=workdir / "bench-fachverfahren",
        poll_interval=BENCH_SUBSCRIBER_POLL,
        concurrency=fachverfahren.CONCURRENCY,
    )
    try:
        await worker.run(stop)
    finally:
        worker.close()
        await subscriber.aclose()


async def run_senders(
    profile_paths: list[Path],
    *,
    senders: int,
    attachment_bytes: int,
    stop_at: float,
    poll_interval: float | None,
    on_request: Callable[[str], None],
) -> LoadResult:
    """Sender ``i`` uses ``profile_paths[i % len(profile_paths)]`` (one per node when split)."""
    import httpx

    from fitconnect_kit.client import AsyncSender, SubmissionBuilder
    from fitconnect_kit.demo import demo_json_data

    result = LoadResult()
    attachment = (b"Nachweis " * (attachment_bytes // 9 + 1))[:attachment_bytes]

    async def count(request: httpx.Request) -> None:
        on_request(f"{request.url.scheme}://{request.url.host}:{request.url.port}")

    async def one_sender(index: int) -> None:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(120.0), event_hooks={"request": [count]}, follow_redirects=False
        )
        profile_path = profile_paths[index % len(profile_paths)]
        sender = AsyncSender.from_config("local", profile=profile_path, http_client=client)
        profile = sender.profile
        assert profile is not None
        assert profile.destination_id
        assert profile.data_schema_uri
        wait_options: dict[str, Any] = {"timeout": 120.0}
        if poll_interval is not None:
            wait_options["poll_interval"] = poll_interval
        try:
            while time.monotonic() < stop_at:
                submission = (
                    SubmissionBuilder(profile.destination_id)
                    .service(profile.service_identifier or "", profile.service_name)
                    .json_data(demo_json_data(), schema_uri=profile.data_schema_uri)
                    .attachment(attachment, filename="nachweis.txt", purpose="attachment")
                    .build()
                )
                started = time.monotonic()
                sent = await sender.send(submission)
                report = await sender.wait(sent, **wait_options)
                if not (report.accepted and report.tags_checked):
                    raise RuntimeError(
                        f"submission {sent.submission_id}: {report.status.value}, tags checked: "
                        f"{report.tags_checked}, problems: {[p.type for p in report.problems]}"
                    )
                ended = time.monotonic()
                result.completed.append((ended, ended - started))
        except Exception as exc:
            result.errors.append(f"sender {index}: {type(exc).__name__}: {exc}")
        finally:
            await sender.aclose()
            await client.aclose()

    await asyncio.gather(*(one_sender(i) for i in range(senders)))
    return result


# --- one run --------------------------------------------------------------------------------------


@dataclass
class RunFigures:
    database: str
    round_trips: int
    seconds: float
    latencies: list[float]
    server_cpu: float  # all processes of the stack (dev: the one; split: nodes + subscriber)
    bench_cpu: float
    machine_busy: float  # share of all cores busy in the window
    idle_before: float | None
    errors: list[str]
    requests_per_round_trip: float
    server_counts: dict[str, int]
    bench_counts: dict[str, int]
    subscriber: str = "dev"  # dev | bench | process (split topology)
    topology: str = "dev"
    process_cpu: dict[str, float] = field(default_factory=dict)  # label -> CPU seconds
    requests_per_node: dict[str, int] = field(default_factory=dict)  # sender requests

    @property
    def rate(self) -> float:
        return self.round_trips / self.seconds

    @property
    def label(self) -> str:
        if self.topology == "dev":
            return self.database
        nodes = sum(1 for k in self.process_cpu if k.startswith("zd-"))
        return f"{self.database}, split: {nodes} ZD processes + subscriber process"


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


def _named(counts: dict[str, int], signers: dict[str, str]) -> dict[str, int]:
    """``sign:<typ>:<kid>`` → ``ZD signs SET`` / ``subscriber signs SET`` / ``ZD signs token``."""
    named: Counter[str] = Counter()
    for key, value in counts.items():
        if key.startswith("sign:"):
            _, typ, kid = key.split(":", 2)
            what = "token" if typ == "JWT" else "SET"
            named[f"{signers.get(kid, 'ZD')} signs {what}"] += value
        else:
            named["subscriber decrypts (CEK unwrap)" if key == "decrypt" else key] += value
    return dict(named)


def _rsa_total(counts: dict[str, float]) -> float:
    return sum(v for k, v in counts.items() if " signs " in k or " decrypts " in k)


def run_one(database: str, args: argparse.Namespace, topology: str = "dev") -> RunFigures:
    import psutil

    idle = cpu_idle_percent()
    tag = database if topology == "dev" else f"{database}-split"
    tmp = Path(tempfile.mkdtemp(prefix=f"fc-bench-e2e-{tag}-"))
    pg_name: str | None = None
    database_url: str | None = None
    if database == "postgres":
        pg_name, database_url = create_pg_database(args.pg_url)
    in_bench = topology == "dev" and args.subscriber == "bench"
    stack: DevProcess | SplitStack | None = None
    spy: list[subprocess.Popen[bytes]] = []
    try:
        if topology == "split":
            assert database_url is not None
            stack = SplitStack(
                tmp,
                database_url=database_url,
                nodes=args.zd_processes,
                blob_store=args.blob_store,
                count_rsa=args.count_rsa,
                senders=args.senders,
            )
        else:
            stack = DevProcess(
                tmp,
                database_url=database_url,
                count_rsa=args.count_rsa,
                with_subscriber=not in_bench,
                blob_store=args.blob_store,
            )
        stack.wait_ready()
        stack_processes = {label: psutil.Process(pid) for label, pid in stack.processes().items()}
        me = psutil.Process()
        if args.count_rsa:
            install_rsa_counters()
        requests: Counter[str] = Counter()

        def on_request(node: str) -> None:
            requests[node] += 1

        started = time.monotonic()
        window_start = started + args.warmup
        window_end = window_start + args.duration
        marks: dict[str, Any] = {}

        def mark(name: str) -> None:
            cpu_idle, cpu_total = proc_stat()
            marks[name] = {
                "processes": {
                    label: sum(proc.cpu_times()[:2]) for label, proc in stack_processes.items()
                },
                "bench": sum(me.cpu_times()[:2]),
                "idle": cpu_idle,
                "total": cpu_total,
                "requests": Counter(requests),
                "server_counts": stack.rsa_counts(),
                "bench_counts": rsa_counts(),
                "time": time.monotonic(),
            }

        async def main() -> LoadResult:
            async def timer() -> None:
                await asyncio.sleep(max(0.0, window_start - time.monotonic()))
                await asyncio.to_thread(mark, "start")
                if args.py_spy:
                    pids = {label: proc.pid for label, proc in stack_processes.items()}
                    spy.extend(start_py_spy(args.py_spy, tag, pids, args.duration))
                await asyncio.sleep(max(0.0, window_end - time.monotonic()))
                await asyncio.to_thread(mark, "end")

            timer_task = asyncio.create_task(timer())
            stop_subscriber = asyncio.Event()
            subscriber_task = (
                asyncio.create_task(run_subscriber(stack.sender_profiles[0], tmp, stop_subscriber))
                if in_bench
                else None
            )
            load = await run_senders(
                stack.sender_profiles,
                senders=args.senders,
                attachment_bytes=args.attachment_bytes,
                stop_at=window_end,
                poll_interval=args.poll_interval,
                on_request=on_request,
            )
            await timer_task
            if subscriber_task is not None:
                stop_subscriber.set()
                await subscriber_task
            return load

        load = asyncio.run(main())
        for proc in spy:
            proc.wait(timeout=120)
        if args.py_spy:
            _wait_for_profiles(args.py_spy, tag, [*stack_processes, "bench"])
        start, end = marks["start"], marks["end"]
        inside = [lat for (t, lat) in load.completed if start["time"] <= t <= end["time"]]
        seconds = end["time"] - start["time"]
        busy = 1.0 - (end["idle"] - start["idle"]) / max(1, end["total"] - start["total"])
        process_cpu = {
            label: end["processes"][label] - start["processes"][label] for label in stack_processes
        }
        per_node = end["requests"] - start["requests"]
        return RunFigures(
            database=database,
            round_trips=len(inside),
            seconds=seconds,
            latencies=inside,
            server_cpu=sum(process_cpu.values()),
            bench_cpu=end["bench"] - start["bench"],
            machine_busy=busy,
            idle_before=idle,
            errors=load.errors,
            requests_per_round_trip=sum(per_node.values()) / max(1, len(inside)),
            server_counts=_named(
                _diff(end["server_counts"], start["server_counts"]), stack.signer_names()
            ),
            bench_counts=_named(
                _diff(end["bench_counts"], start["bench_counts"]), stack.signer_names()
            ),
            subscriber="process" if topology == "split" else args.subscriber,
            topology=topology,
            process_cpu=process_cpu,
            requests_per_node=dict(per_node),
        )
    finally:
        status = stack.stop() if stack is not None else 0
        if status not in (0, None):
            print(f"warning: a stack process exited with status {status}", file=sys.stderr)
        if pg_name is not None:
            drop_pg_database(args.pg_url, pg_name)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --- py-spy ---------------------------------------------------------------------------------------


def start_py_spy(directory: Path, tag: str, pids: dict[str, int], seconds: float) -> list[Any]:
    """Record each stack process (``label`` → pid) and this one (``bench``) with py-spy."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for who, target in (*pids.items(), ("bench", os.getpid())):
        out = directory / f"{tag}-{who}.txt"
        procs.append(
            subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(target),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--gil",  # only the thread holding the GIL: where Python spends CPU
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


def _wait_for_profiles(directory: Path, tag: str, labels: list[str], seconds: float = 30.0) -> None:
    """py-spy writes its file when it ends; give it time to appear completely."""
    deadline = time.monotonic() + seconds
    for who in labels:
        path = directory / f"{tag}-{who}.txt"
        last = -1
        while time.monotonic() < deadline:
            size = path.stat().st_size if path.exists() else 0
            if size and size == last:
                break
            last = size
            time.sleep(0.5)


def top_frames(raw: Path, limit: int = 15) -> list[tuple[float, float, str]]:
    """(self %, total %, frame) of a py-spy ``--format raw`` (collapsed stacks) file."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        samples += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return []
    return [
        (100.0 * own[frame] / samples, 100.0 * total[frame] / samples, frame)
        for frame, _ in own.most_common(limit)
    ]


# --- report ---------------------------------------------------------------------------------------


def print_run(figures: RunFigures, capacity: RsaCapacity, limit: float) -> None:
    rt = figures.round_trips
    in_dev = figures.subscriber == "dev"
    split = figures.topology == "split"
    print()
    print(f"== {figures.label} ==")
    if figures.idle_before is not None:
        print(f"CPU idle before the run: {figures.idle_before:.0f}%")
    print(
        f"round trips: {rt} in {figures.seconds:.1f} s = {figures.rate:.1f} /s   "
        f"(HTTP requests by the senders: {figures.requests_per_round_trip:.1f} per round trip)"
    )
    print(
        f"latency: p50 {1000 * _percentile(figures.latencies, 0.50):.0f} ms, "
        f"p99 {1000 * _percentile(figures.latencies, 0.99):.0f} ms"
    )
    window = figures.seconds
    if split:
        zd = {k: v for k, v in figures.process_cpu.items() if k.startswith("zd-")}
        zd_cpu = sum(zd.values())
        subscriber_cpu = figures.process_cpu.get("subscriber", 0.0)
        print(
            f"ZD processes CPU ({len(zd)} × `fitconnect serve`): "
            f"{1000 * zd_cpu / max(1, rt):.1f} ms per round trip, "
            f"{100 * zd_cpu / window:.0f}% of one core in all ("
            + ", ".join(f"{k} {100 * v / window:.0f}%" for k, v in zd.items())
            + ")"
        )
        print(
            "subscriber process CPU (demo Fachverfahren's worker, polling): "
            f"{1000 * subscriber_cpu / max(1, rt):.1f} ms per round trip, "
            f"{100 * subscriber_cpu / window:.0f}% of one core"
        )
        total = sum(figures.requests_per_node.values()) or 1
        print(
            "sender requests per node: "
            + ", ".join(
                f"{url} {100 * n / total:.0f}%"
                for url, n in sorted(figures.requests_per_node.items())
            )
        )
    else:
        print(
            f"server process CPU ({'ZD + demo Fachverfahren' if in_dev else 'ZD'}): "
            f"{1000 * figures.server_cpu / max(1, rt):.1f} ms per round trip, "
            f"{100 * figures.server_cpu / window:.0f}% of one core"
        )
    in_bench = figures.subscriber == "bench"
    print(
        f"bench process CPU ({'senders + subscriber' if in_bench else 'senders'}): "
        f"{1000 * figures.bench_cpu / max(1, rt):.1f} ms per round "
        f"trip, {100 * figures.bench_cpu / window:.0f}% of one core"
    )
    busy = 100 * figures.machine_busy
    print(f"machine CPU busy in the window: {busy:.0f}% of {capacity.cores} cores")
    if figures.server_counts or figures.bench_counts:
        per = {k: v / max(1, rt) for k, v in figures.server_counts.items()}
        bench = {k: v / max(1, rt) for k, v in figures.bench_counts.items()}
        print(
            "counted per round trip (RSA private-key operations, requests, statements): "
            + ("ZD + subscriber processes " if split else "server process ")
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items()))
            + f" (RSA total {_rsa_total(per):.2f})"
            + ("; bench process " if figures.subscriber == "bench" else "; senders ")
            + (", ".join(f"{k} {v:.2f}" for k, v in sorted(bench.items())) or "none")
        )
    ratio = figures.rate / limit
    verdict = "target met" if ratio >= TARGET_RATIO else "target NOT met"
    print(
        f"physical limit {limit:.1f} round trips/s; achieved {figures.rate:.1f} /s = "
        f"{100 * ratio:.0f}% of it (target ≥ {100 * TARGET_RATIO:.0f}%): {verdict}"
    )
    for error in figures.errors[:5]:
        print(f"error: {error}")


def print_floor(floor: HttpFloor, capacity: RsaCapacity, limits: dict[bool, float]) -> None:
    """What the bare HTTP stack and the RSA operations alone allow: the reachable ceiling."""
    _, signs, decrypts = protocol_operations("dev")
    requests = sum(PROTOCOL_REQUESTS.values())
    rsa_ms = 1000 * (signs / capacity.sign_one + decrypts / capacity.decrypt_one)
    floor_ms = requests * floor.per_request_ms + rsa_ms
    ceiling = capacity.cores * 1000 / floor_ms
    limit = limits.get(True) or next(iter(limits.values()))
    print(
        f"HTTP floor (bench/http_floor.py: uvicorn + a do-nothing ASGI app, httpx with "
        f"{floor.requests} requests over the senders' concurrency): CPU per request server "
        f"{floor.server_ms:.2f} ms + client {floor.client_ms:.2f} ms = "
        f"{floor.per_request_ms:.2f} ms"
    )
    print(
        f"floor of one round trip: {requests} requests the protocol needs × "
        f"{floor.per_request_ms:.2f} ms + {signs + decrypts} RSA operations ({rsa_ms:.1f} ms at "
        f"the per-core rate) = {floor_ms:.1f} ms CPU → at most {ceiling:.1f} round trips/s on "
        f"{capacity.cores} cores = {100 * ceiling / limit:.0f}% of the physical limit, with no "
        "framework, database, JSON, hashing or AES at all"
    )


def _describe(topology: str, args: argparse.Namespace) -> str:
    if topology == "split":
        return (
            f"split topology: {args.zd_processes} `fitconnect serve` processes on one PostgreSQL "
            f"database ({args.blob_store} blobs), same base_url, clients round-robin over them; "
            "the demo Fachverfahren's worker in a process of its own (polling)"
        )
    if args.subscriber == "dev":
        return "demo Fachverfahren of `fitconnect dev` as the subscriber"
    return "subscriber worker in the bench process (`fitconnect dev --no-subscriber`)"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--rsa-worker":
        kind, pem, start_at, seconds = sys.argv[2:6]
        rsa_worker(kind, pem, float(start_at), float(seconds))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--dev-wrapper":
        dev_wrapper_main(sys.argv[2], sys.argv[3:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--subscriber-worker":
        subscriber_main(*sys.argv[2:5])
        return

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--topology",
        choices=["dev", "split", "both"],
        default="dev",
        help="dev: one `fitconnect dev` process; split: --zd-processes `fitconnect serve` "
        "processes on one PostgreSQL database and the subscriber worker in a process of its "
        "own (PostgreSQL only); both: dev, then split",
    )
    parser.add_argument(
        "--zd-processes", type=int, default=2, help="Zustelldienst processes (split topology)"
    )
    parser.add_argument(
        "--blob-store",
        choices=["filesystem", "postgres"],
        default="filesystem",
        help="blob store on PostgreSQL (filesystem: one data directory shared by all nodes)",
    )
    parser.add_argument("--senders", type=int, default=16, help="concurrent senders")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--attachment-bytes", type=int, default=4096)
    parser.add_argument(
        "--poll-interval", type=float, default=None, help="first wait() poll (default: SDK's)"
    )
    parser.add_argument(
        "--subscriber",
        choices=["dev", "bench"],
        default="dev",
        help="dev: the demo Fachverfahren inside `fitconnect dev` (callbacks); bench: "
        "`fitconnect dev --no-subscriber` and the same SubscriberWorker in this process "
        "(polling); dev topology only",
    )
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server (trust)")
    parser.add_argument("--rsa-seconds", type=float, default=3.0, help="per RSA measurement")
    parser.add_argument(
        "--count-rsa",
        action="store_true",
        help="count RSA private-key operations (and HTTP requests served, SQL statements) in "
        "the stack's processes (wrapped CLI) and here",
    )
    parser.add_argument(
        "--floor-requests",
        type=int,
        default=4000,
        help="requests for the HTTP floor measurement (bench/http_floor.py); 0 skips it",
    )
    parser.add_argument("--py-spy", type=Path, default=None, help="record profiles into DIR")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    args = parser.parse_args()
    if args.zd_processes < 1:
        parser.error("--zd-processes must be at least 1")

    import cryptography

    databases = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    topologies = ["dev", "split"] if args.topology == "both" else [args.topology]
    plan = [
        (database, topology)
        for topology in topologies
        for database in databases
        if topology == "dev" or database == "postgres"
    ]
    if not plan:
        parser.error("the split topology needs --database postgres (or both)")
    print(
        f"end-to-end: {args.senders} senders, {args.attachment_bytes}-byte "
        f"attachment, {args.warmup:.0f} s warm-up + {args.duration:.0f} s measured"
    )
    for topology in topologies:
        print(f"{topology}: {_describe(topology, args)}")
    print(
        f"Python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    runs = [run_one(database, args, topology) for database, topology in plan]

    idle = cpu_idle_percent()
    capacity = measure_rsa_capacity(args.rsa_seconds)
    print()
    print(
        f"RSA-4096 private-key capacity (cryptography, {capacity.cores} processes in parallel"
        + ("" if idle is None else f", CPU idle before {idle:.0f}%")
        + f"): sign PS512 {capacity.sign_all:.0f}/s, decrypt OAEP-256 {capacity.decrypt_all:.0f}/s;"
        f" per core: sign {capacity.sign_one:.0f}/s, decrypt {capacity.decrypt_one:.0f}/s"
    )
    limits: dict[bool, float] = {}
    for with_callback in sorted({figures.subscriber == "dev" for figures in runs}, reverse=True):
        zd_sets, signs, decrypts = protocol_operations("dev" if with_callback else "polling")
        limits[with_callback] = capacity.round_trips(signs, decrypts)
        print(
            "RSA private-key operations per round trip (protocol"
            + ("" if with_callback else ", subscriber polling")
            + "): "
            + ", ".join(f"ZD signs {k} {v}" for k, v in zd_sets.items())
            + ", "
            + ", ".join(f"subscriber unwraps {k} {v}" for k, v in SUBSCRIBER_UNWRAPS.items())
            + ", "
            + ", ".join(f"subscriber signs {k} {v}" for k, v in SUBSCRIBER_SETS.items())
            + f", access tokens ~0 (cached 1800 s) = {signs} signs + {decrypts} decrypts"
        )
        print(f"physical limit = capacity / operations = {limits[with_callback]:.1f} round trips/s")
    floor = measure_http_floor(args.floor_requests, args.senders) if args.floor_requests else None
    if floor is not None:
        print_floor(floor, capacity, limits)
    for figures in runs:
        print_run(figures, capacity, limits[figures.subscriber == "dev"])
    if args.py_spy:
        for raw in sorted(args.py_spy.glob("*.txt")):
            print()
            print(f"py-spy top frames ({raw.stem}): self%  total%  frame")
            for own, total, frame in top_frames(raw):
                print(f"  {own:5.1f} {total:6.1f}  {frame}")
    if any(figures.errors for figures in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
