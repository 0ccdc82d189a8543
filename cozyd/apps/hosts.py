"""The host names of an instance's apps: nested (``<slug>.<domain>``,
cozy-stack's default) or flat (``<user>-<slug>.<parent>``, for one
wildcard certificate), as ``[apps] subdomains`` says."""

from __future__ import annotations

from urllib.parse import urlunsplit

NESTED = "nested"
FLAT = "flat"


def app_host(domain: str, slug: str, mode: str = NESTED) -> str:
    if mode == FLAT:
        user, dot, parent = domain.partition(".")
        if dot:
            return f"{user}-{slug}.{parent}"
    return f"{slug}.{domain}"


def app_url(
    scheme: str,
    domain: str,
    slug: str,
    mode: str = NESTED,
    path: str = "/",
    query: str = "",
) -> str:
    return urlunsplit((scheme, app_host(domain, slug, mode), path, query, ""))


def split_flat_host(host: str) -> tuple[str, str] | None:
    """``alice-drive.cozy.example`` → (``alice.cozy.example``, ``drive``):
    the first label split at its first dash (slugs may hold dashes,
    the first label of a flat instance may not, as in cozy-stack)."""
    label, dot, parent = host.partition(".")
    user, dash, slug = label.partition("-")
    if not (dot and dash and user and slug and parent):
        return None
    return f"{user}.{parent}", slug
