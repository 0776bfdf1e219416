"""Command line entry points: astara-orchestrator (server) and astara-ctl."""
