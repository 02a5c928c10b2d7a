"""Repeatable experiments built from the CLI's modes (``launch/repro_*.sh`` drive them)."""
