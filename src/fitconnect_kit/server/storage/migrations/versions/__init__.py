"""Alembic revisions; one file per schema change, never edited after release."""
