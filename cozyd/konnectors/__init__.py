"""Konnectors: their runs in a sandbox, and their accounts' credentials."""
