"""Slim companion orchestrator for astara appliances."""
