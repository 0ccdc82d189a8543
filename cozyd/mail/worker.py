"""The ``sendmail`` worker: a job's message (cozy-stack's mail options)
made into a mail (``cozyd.mail.message``) and sent (``cozyd.mail.smtp``)."""

from __future__ import annotations

from typing import Any

from twisted.internet import error as net_error
from twisted.mail import smtp

from cozyd.jobs.workers import JobContext, WorkerError
from cozyd.mail.message import Address, MailError, Owner, build_message
from cozyd.mail.smtp import Mailer

SETTINGS = "io.cozy.settings"
SETTINGS_ID = "io.cozy.settings.instance"


class SendmailWorker:
    name = "sendmail"
    concurrency = 4
    max_exec_count = 3
    timeout = 60.0

    def __init__(self, mailer: Mailer):
        self.mailer = mailer

    async def owner(self, context: JobContext) -> Owner:
        from cozyd.documents import DatabaseNotFound, DocNotFound

        instance = context.instance
        try:
            settings = await context.documents.get(instance, SETTINGS, SETTINGS_ID)
        except (DocNotFound, DatabaseNotFound):
            settings = {}
        return Owner(
            domain=instance.domain,
            email=str(settings.get("email") or ""),
            public_name=str(settings.get("public_name") or ""),
            locale=instance.locale or "en",
        )

    async def run(self, context: JobContext) -> dict[str, Any] | None:
        owner = await self.owner(context)
        sender = Address(self.mailer.sender_for(owner.domain))
        try:
            mail = build_message(context.message, sender=sender, owner=owner)
        except MailError as exc:
            raise WorkerError(str(exc), retry=False) from None
        try:
            await self.mailer.send(mail)
        except smtp.SMTPClientError as exc:
            permanent = isinstance(exc.code, int) and 500 <= exc.code < 600
            raise WorkerError(f"SMTP: {exc}", retry=not permanent) from None
        except (net_error.ConnectError, net_error.ConnectionLost, OSError) as exc:
            raise WorkerError(f"SMTP server unreachable: {exc}") from None
        return {"recipients": len(mail.recipients)}
