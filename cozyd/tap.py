"""``twistd cozyd``: command-line options and the service maker.

This is the only module that touches the global reactor.
"""

from __future__ import annotations

import sys

from twisted.python import usage

from cozyd.config import FLAG_KEYS, ConfigError, load_config


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the cozyd personal-cloud server: the public API, served for every "
        "instance by its Host header, and the admin API used by cozyctl. Flags beat "
        "COZYD_<SECTION>_<KEY> environment variables, which beat the config file."
    )
    optParameters = [
        ["config", "c", None, "Configuration file (INI), e.g. /etc/cozyd/cozyd.conf."],
        [
            "listen",
            None,
            None,
            "Where the public API listens, a Twisted endpoint: "
            "tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem:certKey=cert.pem, "
            "unix:/run/cozyd/public.sock, systemd:domain=INET:index=0 ([server] listen).",
        ],
        [
            "admin-listen",
            None,
            None,
            "Where the admin API listens, a Twisted endpoint "
            "([admin] listen); loopback only unless [admin] allow_remote.",
        ],
        ["host", None, None, "Address of the public API ([server] host)."],
        ["port", "p", None, "Port of the public API ([server] port), 0 for any."],
        ["admin-host", None, None, "Address of the admin API ([admin] host)."],
        ["admin-port", None, None, "Port of the admin API ([admin] port), 0 for any."],
        [
            "couchdb-url",
            None,
            None,
            "Use the CouchDB engine at this URL ([couchdb] url, selects the engine).",
        ],
        ["fs-url", None, None, "Where file contents live, file:///path ([fs] url)."],
        [
            "data-dir",
            None,
            None,
            "Data directory of the embedded engine ([storage] data_dir).",
        ],
        [
            "realtime-url",
            None,
            None,
            "Share realtime events with the other nodes through this Redis, "
            "redis://host:port/db ([realtime] url).",
        ],
    ]

    def postOptions(self) -> None:
        flags = {flag: self[flag] for flag in FLAG_KEYS}
        try:
            self["loaded"] = load_config(self["config"], flags=flags)
        except ConfigError as exc:
            # All problems at once; the config is not usable, so refuse to
            # start: status 1, the problems on stderr, no usage text.
            if len(exc.problems) == 1:
                message = f"cozyd cannot start: {exc.problems[0]}"
            else:
                lines = "\n".join(f"  - {p}" for p in exc.problems)
                message = f"cozyd cannot start, the configuration has problems:\n{lines}"
            sys.stderr.write(message + "\n")
            sys.stderr.flush()
            raise SystemExit(1) from None


def makeService(options: Options):
    from twisted.internet import reactor

    from cozyd.logs import make_observer
    from cozyd.service import CozydService

    config = options["loaded"]
    # twistd's own options (--logfile, --syslog, -n) tell where logs go.
    observer = make_observer(config.get("log", "format"), getattr(options, "parent", None))
    # stderr as it is now: twistd sends it into the log once logging starts.
    return CozydService(
        config, reactor, log_observer=observer, stderr=sys.stderr, freeze_gc=True
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run me with: twistd -n cozyd -c cozyd.conf")
