"""Downloads for the app sources (tarballs, registry answers), with treq.

A body is handed to its sink as it arrives and refused past ``max_size``;
the whole download has a deadline. ``https://`` is verified against the
system's certificate authorities (OpenSSL's defaults, so ``SSL_CERT_FILE``
names other ones).
"""

from __future__ import annotations

from collections.abc import Callable

import treq
from twisted.internet import defer

from cozyd.apps.sources import TooLarge


def downloader(reactor, *, timeout: float = 60.0):
    async def download(
        url: str, sink: Callable[[bytes], None], max_size: int
    ) -> tuple[int, str]:
        async def run() -> tuple[int, str]:
            response = await treq.get(
                url, reactor=reactor, timeout=timeout, unbuffered=True, allow_redirects=True
            )
            content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
            if response.code != 200:
                await treq.collect(response, lambda _: None)
                return response.code, content_type.decode("latin-1")
            received = 0

            def collect(chunk: bytes) -> None:
                nonlocal received
                received += len(chunk)
                if received > max_size:
                    raise TooLarge()
                sink(chunk)

            await treq.collect(response, collect)
            return 200, content_type.decode("latin-1")

        d = defer.Deferred.fromCoroutine(run())
        d.addTimeout(timeout, reactor)
        return await d

    return download
