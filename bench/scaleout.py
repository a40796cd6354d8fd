"""Scale-out under load: several Zustelldienst processes on one PostgreSQL database.

    .venv/bin/python bench/scaleout.py [--submissions 200] [--concurrency 32] [--nodes 2]
                                       [--subscribers 2] [--attachment-kib 256]

The scenario of ``tests/integration/test_server_scaleout.py`` with bigger numbers: ``--nodes``
server processes (same public base URL, PostgreSQL blob store, workers on) on a fresh database
at 127.0.0.1:5432, ``--submissions`` submissions with one attachment each sent by async senders
(``--concurrency`` at once, requests spread over the nodes), ``--subscribers`` receiving
systems polling one node each, fetching, downloading and racing to accept, destination and
sender callbacks to real receivers. Afterwards every check of the test runs (no lost or
duplicated event, every callback exactly once per event, all SETs verified), and the figures
are printed: throughput, event and callback counts, deliveries per node, retries.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.*

from tests.integration.test_server_scaleout import (
    check_scenario,
    cluster,
    delivered_per_node,
    run_scenario,
)
from tests.support.db import make_backend, postgres_unavailable_reason


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--submissions", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--subscribers", type=int, default=2)
    parser.add_argument("--attachment-kib", type=int, default=256)
    args = parser.parse_args()
    reason = postgres_unavailable_reason()
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="fitconnect-scaleout-") as tmp:
        work = Path(tmp)
        with make_backend("postgres", work) as backend:
            started = time.monotonic()
            with cluster(backend, work, nodes=args.nodes, subscribers=args.subscribers) as c:
                ready = time.monotonic() - started
                print(
                    f"{args.nodes} nodes ready in {ready:.1f} s; sending {args.submissions} "
                    f"submissions ({args.concurrency} at once, {args.attachment_kib} KiB "
                    f"attachment each), {args.subscribers} subscribers ..."
                )
                report = asyncio.run(
                    run_scenario(
                        c,
                        submissions=args.submissions,
                        concurrency=args.concurrency,
                        attachment_size=args.attachment_kib * 1024,
                        time_limit=max(120.0, args.submissions * 2.0),
                    )
                )
                check_started = time.monotonic()
                verified = check_scenario(c, report, args.submissions)
                check_seconds = time.monotonic() - check_started
            per_node = delivered_per_node(c)

    n = args.submissions
    events = Counter(name for names in verified.events.values() for name in names)
    callbacks = sum(verified.deliveries.values())
    print()
    print(f"submissions           {n} sent, {len(report.accepted_by)} accepted (all checks ok)")
    print(
        f"send                  {report.send_seconds:7.1f} s  {n / report.send_seconds:7.1f} "
        f"submissions/s  ({report.uploaded_bytes / 1e6 / report.send_seconds:.1f} MB/s uploaded)"
    )
    print(
        f"send → all accepted   {report.receive_seconds:7.1f} s  "
        f"{n / report.receive_seconds:7.1f} submissions/s end to end"
    )
    print(f"callbacks settled     +{report.settle_seconds:.1f} s after the last accept")
    print(
        f"events                {verified.total_events} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(events.items()))})"
    )
    print(
        f"callbacks             {callbacks} delivered exactly once each "
        f"(NEW_SUBMISSIONS {n}, NEW_EVENTS {sum(verified.expected_new_events.values())}); "
        f"attempts {dict(sorted(verified.attempts.items()))}"
    )
    print(f"deliveries per node   {[sum(node.values()) for node in per_node]}")
    print(f"requests per node     {[report.requests[url] for url in c.urls]}")
    print(f"accept races lost     {report.accept_conflicts} (409, the other subscriber won)")
    print(f"verification          {check_seconds:.1f} s (every SET of every log)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
