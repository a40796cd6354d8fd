"""Our Zustelldienst: FIT-Connect Submission API v1 and an OAuth token service.

Module map (see ``docs/server.md``):

* :mod:`.app` — ``create_app`` (lifespan: database, migrations, keys, blobs, workers).
* :mod:`.config` — ``ServerConfig`` from TOML/JSON and ``FITCONNECT_SERVER_*``.
* :mod:`.state` — ``app.state.zd`` (:class:`~.state.ZdState`), ``ZD``/``DbSession`` dependencies.
* :mod:`.auth` — client secrets, access tokens, :class:`~.auth.Principal` dependencies.
* :mod:`.problems` — :class:`~.problems.ApiError` and the problem JSON handlers.
* :mod:`.middleware` — rate limiting and body limits.
* :mod:`.server_keys` — the ZD's own signing keys (shared through the database).
* :mod:`.api` — routers (``token``, ``info``, …); :mod:`.workers` — background worker registry.
* :mod:`.storage` — engine/sessions, ORM models, migrations, blob stores.
* :mod:`.admin` — clients, destinations, links; :mod:`.runner` — uvicorn entry points.
* :mod:`.compat` — [U] choices of the server.
"""
