"""The ``deadlines`` worker: one pass applies every FIT-Connect deadline.

The rules live in :mod:`fitconnect_kit.server.domain.deadlines`; this module only names the pass
for :func:`fitconnect_kit.server.workers.default_workers` (interval ``workers.deadline_interval``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fitconnect_kit.server.domain.deadlines import DeadlinePassResult
from fitconnect_kit.server.domain.deadlines import run_deadlines_pass as _run

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState

WORKER_NAME = "deadlines"


async def run_deadlines_pass(zd: ZdState) -> DeadlinePassResult:
    """One pass of all deadlines (incomplete, reminders, reject, deletions, retention)."""
    return await _run(zd)
