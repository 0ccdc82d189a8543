"""The framework's ceiling: a bare Klein handler answering a fixed JSON
document, run as its own process like the daemon (``python bare_klein.py PORT``).
It prints ``listening on PORT`` once ready."""

from __future__ import annotations

import json
import sys

from klein import Klein
from twisted.internet import endpoints, reactor
from twisted.web.server import Site

DOC = json.dumps({"_id": "doc-00000", "_rev": "1-0123456789abcdef0123456789abcdef",
                  "n": 0, "title": "document 0", "tags": ["a", "b"]}).encode()

app = Klein()


@app.route("/data/<doctype>/<doc_id>", methods=["GET"])
def get_doc(request, doctype, doc_id):
    request.setHeader(b"Content-Type", b"application/json")
    return DOC


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")

    def started(listening):
        print(f"listening on {listening.getHost().port}", flush=True)
    endpoint.listen(Site(app.resource())).addCallback(started)
    reactor.run()


if __name__ == "__main__":
    main()
