"""cozyd: a personal-cloud server speaking cozy-stack's protocols."""

__version__ = "0.1.0"
