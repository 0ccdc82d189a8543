"""The ceiling of any CouchDB engine on Twisted: a bare twisted.web server
that forwards every request (method, path, query, body) to CouchDB with
treq over a persistent pool sized as the CouchDB engine's (and used as the
engine uses it: ``cozyd.storage.http_client``), and answers
CouchDB's status and bytes. No routing, no token, no permission, no
rewriting: one more HTTP hop in Python, nothing else. Run as its own
process like the daemon (``python bare_proxy.py COUCHDB_URL``); it prints
``listening on PORT`` once ready, then one access-log line per request to
stdout, as twistd does for the daemon."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from treq import client as treq_client
from twisted.internet import defer, endpoints, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web import client as web_client
from twisted.web import resource, server
from twisted.web.http_headers import Headers

from cozyd.service import access_log_line
from cozyd.storage.couchdb import CouchDBStore
from cozyd.storage.http_client import URI, lean_client


class Forward(resource.Resource):
    isLeaf = True

    def __init__(self, couchdb: str, http: treq_client.HTTPClient):
        super().__init__()
        self.couchdb = couchdb
        self.http = http

    def render(self, request):
        defer.Deferred.fromCoroutine(self._forward(request))
        return server.NOT_DONE_YET

    async def _forward(self, request) -> None:
        headers = Headers()
        for name in (b"authorization", b"content-type", b"accept"):
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        body = request.content.read() or None
        response = await self.http.request(
            request.method.decode(),
            URI(self.couchdb + request.uri.decode("ascii")),
            headers=headers,
            data=body,
            allow_redirects=False,
        )
        content = await response.content()
        request.setResponseCode(response.code)
        content_type = response.headers.getRawHeaders(b"content-type")
        if content_type:
            request.setHeader(b"content-type", content_type[0])
        request.write(content)
        request.finish()


def main() -> None:
    couchdb = sys.argv[1].rstrip("/")
    pool = web_client.HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = CouchDBStore.max_persistent_per_host
    pool.cachedConnectionTimeout = CouchDBStore.idle_connection_timeout
    http = lean_client(web_client.Agent(reactor, pool=pool))
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")

    def started(listening):
        sys.stdout.write(f"listening on {listening.getHost().port}\n")
        sys.stdout.flush()

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout)], redirectStandardIO=False
    )
    site = server.Site(Forward(couchdb, http), logFormatter=access_log_line)
    endpoint.listen(site).addCallback(started)
    reactor.run()


if __name__ == "__main__":
    main()
