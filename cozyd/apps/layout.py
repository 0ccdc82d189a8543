"""Where an instance's installed apps and konnectors live on disk.

The code of an installed app or konnector is a folder of its own, outside
the instance's files (no ``/files`` route can reach it), one per version::

    <data_dir>/apps/<domain>/<kind>/<slug>/<version>/

``kind`` is ``"webapp"`` or ``"konnector"``. Its manifest document is in
``io.cozy.apps`` (web apps) or ``io.cozy.konnectors`` (konnectors) under
the id ``<doctype>/<slug>``, as cozy-stack's, with at least ``slug``,
``state`` (``installing``, ``ready``, ``errored``...), ``version`` and the
manifest's fields (``permissions``, ``fields``, ``services``...).
"""

from __future__ import annotations

import os

WEBAPP = "webapp"
KONNECTOR = "konnector"
KINDS = (WEBAPP, KONNECTOR)
DOCTYPES = {WEBAPP: "io.cozy.apps", KONNECTOR: "io.cozy.konnectors"}


def apps_root(data_dir: str) -> str:
    return os.path.join(data_dir, "apps")


def doc_id(kind: str, slug: str) -> str:
    return f"{DOCTYPES[kind]}/{slug}"


def slug_dir(data_dir: str, domain: str, kind: str, slug: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    return os.path.join(apps_root(data_dir), domain, kind, slug)


def version_dir(data_dir: str, domain: str, kind: str, slug: str, version: str) -> str:
    return os.path.join(slug_dir(data_dir, domain, kind, slug), version)
