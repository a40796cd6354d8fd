"""Test support shared by integration and e2e tests: live servers, databases, seeding.

* :mod:`tests.support.db` — SQLite/PostgreSQL backends (a fresh PostgreSQL database per test).
* :mod:`tests.support.live` — :class:`LiveServer` (our app on a real loopback socket in a
  background thread, ManualClock injectable) and :class:`ServerProcess` (a separate process).
* :mod:`tests.support.seed` — clients, destinations with cached keys, access tokens.

Fixtures using them live in ``tests/integration/conftest.py``.
"""
