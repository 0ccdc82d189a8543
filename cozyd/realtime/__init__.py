"""Realtime: the in-process event hub (``hub.py``) every write publishes to."""
