"""Persistence of the Zustelldienst.

* :mod:`.db` — :class:`~.db.Database` (async engine + session factory, SQLite/PostgreSQL).
* :mod:`.models` — ORM models of every table.
* :mod:`.migrate` — Alembic upgrade on start (advisory lock on PostgreSQL); revisions in
  ``migrations/versions``.
* :mod:`.blobs` — attachment ciphertexts: :class:`~.blobs.FileBlobStore`,
  :class:`~.blobs.PostgresBlobStore`.
"""
