"""The framework's ceiling: a bare Klein handler answering a fixed JSON
document (GET), or parsing a JSON body and answering a made-up revision
(POST, a create without storage), run as its own process like the daemon
(``python bare_klein.py PORT``).
It prints ``listening on PORT`` once ready, then one access-log line per
request to stdout, as twistd does for the daemon, so both pay for logging."""

from __future__ import annotations

import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from klein import Klein
from twisted.internet import endpoints, reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.server import Site

from cozyd.service import access_log_line

DOC = json.dumps(
    {
        "_id": "doc-00000",
        "_rev": "1-0123456789abcdef0123456789abcdef",
        "n": 0,
        "title": "document 0",
        "tags": ["a", "b"],
    }
).encode()

app = Klein()


@app.route("/data/<doctype>/<doc_id>", methods=["GET"])
def get_doc(request, doctype, doc_id):
    request.setHeader(b"Content-Type", b"application/json")
    return DOC


@app.route("/data/<doctype>/", methods=["POST"])
def create_doc(request, doctype):
    body = json.loads(request.content.read())
    request.setHeader(b"Content-Type", b"application/json")
    request.setResponseCode(201)
    doc_id = uuid.uuid4().hex
    return json.dumps(
        {"ok": True, "id": doc_id, "rev": "1-" + doc_id, "type": doctype, "data": body}
    ).encode()


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    endpoint = endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1")

    def started(listening):
        sys.stdout.write(f"listening on {listening.getHost().port}\n")
        sys.stdout.flush()

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout)], redirectStandardIO=False
    )
    endpoint.listen(Site(app.resource(), logFormatter=access_log_line)).addCallback(started)
    reactor.run()


if __name__ == "__main__":
    main()
