"""Alembic migrations of the Zustelldienst database (run by ``storage.migrate``)."""
