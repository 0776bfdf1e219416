"""Alembic migrations of the orchestrator's store (run by ``astara-orchestrator db upgrade``,
or at start on SQLite; see ``store/database.py``)."""
