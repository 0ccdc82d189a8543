"""Sending over SMTP with Twisted's mail client (``ESMTPSenderFactory``).

``[mail]`` of ``etc/cozyd.conf``: ``host``, ``port``, ``tls`` (``none``,
``starttls``: required before anything is sent, ``ssl``: TLS from the
first byte), ``username``/``password`` (AUTH when a username is given),
``from`` (the sender of the stack's mails; default ``noreply@<domain>``),
``ca_file`` (certificate authorities to trust instead of the system's) and
``timeout``. The server's certificate is always checked against ``host``.
"""

from __future__ import annotations

import io
from typing import Any

import attrs
from twisted.internet import defer, ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.mail.smtp import ESMTPSenderFactory

from cozyd.mail.message import Mail

TLS_MODES = ("none", "starttls", "ssl")


@attrs.frozen
class MailSettings:
    host: str = "127.0.0.1"
    port: int = 25
    tls: str = "starttls"
    username: str = ""
    password: str = attrs.field(default="", repr=False)
    sender: str = ""
    ca_file: str = ""
    timeout: float = 30.0

    @classmethod
    def from_config(cls, config: Any) -> MailSettings:
        return cls(
            host=config.get("mail", "host"),
            port=config.get("mail", "port"),
            tls=config.get("mail", "tls"),
            username=config.get("mail", "username"),
            password=config.get("mail", "password"),
            sender=config.get("mail", "from"),
            ca_file=config.get("mail", "ca_file"),
            timeout=config.get("mail", "timeout"),
        )


class Mailer:
    def __init__(self, settings: MailSettings, *, reactor: Any):
        self.settings = settings
        self._reactor = reactor

    def sender_for(self, domain: str) -> str:
        return self.settings.sender or f"noreply@{domain.split(':')[0]}"

    def _tls_options(self) -> Any:
        trust = None
        if self.settings.ca_file:
            with open(self.settings.ca_file, "rb") as f:
                trust = ssl.Certificate.loadPEM(f.read())
        return ssl.optionsForClientTLS(self.settings.host, trustRoot=trust)

    async def send(self, mail: Mail) -> None:
        """Send ``mail``; fails with the SMTP error (or a timeout)."""
        settings = self.settings
        done: defer.Deferred = defer.Deferred()
        tls = self._tls_options() if settings.tls != "none" else None
        factory = ESMTPSenderFactory(
            settings.username.encode() if settings.username else None,
            settings.password.encode() if settings.password else None,
            mail.sender.email,
            [r.email for r in mail.recipients],
            io.BytesIO(mail.as_bytes()),
            done,
            retries=0,
            timeout=settings.timeout,
            contextFactory=tls if settings.tls == "starttls" else None,
            requireAuthentication=bool(settings.username),
            requireTransportSecurity=settings.tls == "starttls",
        )
        factory.noisy = False
        endpoint: Any = HostnameEndpoint(
            self._reactor, settings.host, settings.port, timeout=settings.timeout
        )
        if settings.tls == "ssl":
            endpoint = wrapClientTLS(tls, endpoint)
        connecting = endpoint.connect(factory)
        connecting.addTimeout(settings.timeout, self._reactor)
        protocol = await connecting
        # One deadline for the whole exchange (a failed TLS handshake, for
        # one, leaves Twisted's client waiting).
        done.addTimeout(settings.timeout, self._reactor)
        try:
            await done
        except BaseException:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
            raise
