"""Helpers shared by the bench scripts.

The scripts run as ``python bench/X.py``, so this directory is on ``sys.path`` and they import
this module as ``_support``. Only the standard library is imported here at module level: the
workers measure their own memory, and the project's modules are imported where they are used.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class RssMeter:
    """Peak RSS growth of this process from :meth:`start` on.

    On Linux the kernel's peak counter (VmHWM) is reset at the start, so the growth is exact;
    elsewhere it is the peak ``ru_maxrss`` minus the RSS at the start (an upper bound, because
    imports may have peaked higher before).
    """

    def __init__(self) -> None:
        self._baseline = 0
        self._exact = False

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"{field} not in /proc/self/status")

    def start(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")  # reset the peak RSS to the current RSS
            self._baseline = self._status("VmRSS")
            self._exact = True
        except OSError:
            import psutil

            self._baseline = int(psutil.Process().memory_info().rss)

    @property
    def baseline(self) -> int:
        return self._baseline

    def growth(self) -> int:
        if self._exact:
            return max(0, self._status("VmHWM") - self._baseline)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
        return max(0, peak - self._baseline)


def proc_stat() -> tuple[int, int]:
    """(idle + iowait, total) CPU time of the machine so far (Linux ``/proc/stat``, in ticks)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:9]]
    return values[3] + values[4], sum(values)  # idle + iowait, total


def cpu_idle_percent(seconds: float = 1.0) -> float | None:
    """Share of idle CPU time over ``seconds`` (Linux /proc/stat), to flag a busy machine."""
    try:
        idle_before, total_before = proc_stat()
        time.sleep(seconds)
        idle_after, total_after = proc_stat()
    except (OSError, ValueError, IndexError):
        return None
    return 100.0 * (idle_after - idle_before) / max(1, total_after - total_before)


def rsa_key_pem() -> bytes:
    """An RSA-4096 private key as PKCS#8 PEM: the cached test key, else a freshly generated one."""
    from cryptography.hazmat.primitives import serialization

    sys.path.insert(0, str(ROOT))
    try:
        from tests.keycache import rsa_key  # cached RSA-4096 test key

        key = rsa_key(0)
    except ImportError:
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- a Zustelldienst process for a benchmark ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def zd_settings(
    port: int, data_dir: Path, *, max_attachment: int, max_submission: int, **extra: Any
) -> dict[str, Any]:
    """Settings of a Zustelldienst on ``127.0.0.1:port``: workers off, warnings only, limits.

    ``extra`` adds (or replaces) top-level settings, e.g. ``blob_store`` or ``rate_limit``.
    """
    return {
        "base_url": f"http://127.0.0.1:{port}",
        "host": "127.0.0.1",
        "port": port,
        "data_dir": str(data_dir),
        "log_level": "warning",
        "workers": {"enabled": False},
        "limits": {"max_attachment_size": max_attachment, "max_submission_size": max_submission},
        **extra,
    }


async def seed_destination(
    config: Any,
    keys: Any,
    *,
    service_identifier: str | None = None,
    schema_uri: str | None = None,
    with_subscriber: bool = False,
) -> dict[str, Any]:
    """Create a sender and an active destination for ``keys`` (a key set) in ``config``'s database.

    The destination offers one service (default: the demo service) with one JSON schema (default:
    the demo schema) in region DE. With ``with_subscriber`` also a subscriber client linked to it.
    Returns ``sender`` (and ``subscriber``) as ``(client_id, client_secret)``, ``destination_id``
    and ``keys``.
    """
    from fitconnect_kit.demo import DEMO_JSON_SCHEMA_URI, DEMO_SERVICE_IDENTIFIER
    from fitconnect_kit.server import admin

    service = {
        "identifier": service_identifier or DEMO_SERVICE_IDENTIFIER,
        "submissionSchemas": [
            {"schemaUri": schema_uri or DEMO_JSON_SCHEMA_URI, "mimeType": "application/json"}
        ],
        "regions": ["DE"],
    }
    database = await admin.open_admin_database(config)
    try:
        sender = await admin.create_client(database, kind="sender")
        subscriber = None
        if with_subscriber:
            subscriber = await admin.create_client(database, kind="subscriber")
        destination = await admin.create_destination(
            database,
            config,
            services=[service],
            encryption_key=keys.encryption_public,
            signing_key=keys.signing_public,
            metadata_versions=["1.0.0"],
        )
        if subscriber is not None:
            await admin.link_client(
                database, client_id=subscriber.client_id, destination_id=destination.destination_id
            )
    finally:
        await database.dispose()
    seeded: dict[str, Any] = {
        "sender": (sender.client_id, sender.client_secret),
        "destination_id": destination.destination_id,
        "keys": keys,
    }
    if subscriber is not None:
        seeded["subscriber"] = (subscriber.client_id, subscriber.client_secret)
    return seeded


def wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Wait until the Zustelldienst answers ``GET /v1/info``; fail if it exits or takes too long."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(base_url + "/v1/info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError("the Zustelldienst did not start")
        time.sleep(0.2)
