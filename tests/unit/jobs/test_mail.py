"""Mails sent through a real SMTP server (aiosmtpd, started here) and read
back: plain, STARTTLS with AUTH, TLS from the first byte, attachments,
and the stack's templates in the owner's language."""

from __future__ import annotations

import base64
import email
import email.policy
import socket
import ssl
from typing import Any

import attrs
import pytest
import pytest_twisted
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from twisted.internet import reactor
from twisted.mail import smtp

from cozyd.jobs.workers import JobContext, WorkerError
from cozyd.mail.message import Address, MailError, Owner, build_message
from cozyd.mail.smtp import Mailer, MailSettings
from cozyd.mail.worker import SendmailWorker
from tests.support.tls import make_ca

OWNER = Owner(domain="alice.cozy.test", email="alice@example.org", public_name="Alice")
SENDER = Address("noreply@alice.cozy.test")


class Inbox:
    def __init__(self) -> None:
        self.received: list[Any] = []

    async def handle_DATA(self, server, session, envelope):
        self.received.append(envelope)
        return "250 OK"

    def messages(self) -> list[email.message.EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=email.policy.default)
            for e in self.received
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@attrs.define
class Server:
    inbox: Inbox
    port: int
    ca: str = ""


@pytest.fixture
def certificates(tmp_path):
    ca = make_ca(str(tmp_path / "tls"))
    issued = ca.issue(str(tmp_path / "tls"), "smtp", ("127.0.0.1",))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.cert, issued.key)
    return ca.cert, context


def start(inbox: Inbox, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def plain_server():
    inbox = Inbox()
    controller, port = start(inbox)
    yield Server(inbox, port)
    controller.stop()


def check_credentials(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"cozy" and auth_data.password == b"s3cret"
    return AuthResult(success=ok)


@pytest.fixture
def starttls_server(certificates):
    ca, context = certificates
    inbox = Inbox()
    controller, port = start(
        inbox,
        tls_context=context,
        require_starttls=True,
        authenticator=check_credentials,
        auth_required=True,
    )
    yield Server(inbox, port, ca)
    controller.stop()


@pytest.fixture
def ssl_server(certificates):
    ca, context = certificates
    inbox = Inbox()
    controller, port = start(inbox, ssl_context=context)
    yield Server(inbox, port, ca)
    controller.stop()


def mailer(port: int, **settings: Any) -> Mailer:
    values = {"host": "127.0.0.1", "port": port, "tls": "none", "timeout": 3, **settings}
    return Mailer(MailSettings(**values), reactor=reactor)


FROM_MODE = {
    "mode": "from",
    "to": [
        {"name": "John Doe", "email": "john@doe.example"},
        {"email": "jane@doe.example"},
    ],
    "subject": "Hey !",
    "parts": [
        {"type": "text/html", "body": "<h1>Hey !</h1>"},
        {"type": "text/plain", "body": "Hey !"},
    ],
    "attachments": [
        {"filename": "notes.txt", "content": base64.b64encode(b"some notes\n").decode()},
        {
            "filename": "../../x.bin",
            "content": base64.b64encode(bytes(range(256))).decode(),
        },
    ],
}


@pytest_twisted.ensureDeferred
async def test_a_mail_with_attachments_over_plain_smtp(plain_server):
    mail = build_message(FROM_MODE, sender=SENDER, owner=OWNER)
    await mailer(plain_server.port).send(mail)
    [envelope] = plain_server.inbox.received
    assert envelope.mail_from == "noreply@alice.cozy.test"
    assert envelope.rcpt_tos == ["john@doe.example", "jane@doe.example"]
    [message] = plain_server.inbox.messages()
    assert message["Subject"] == "Hey !"
    assert "John Doe <john@doe.example>" in message["To"]
    assert message["Reply-To"] == "Alice <alice@example.org>"
    assert message["From"] == "Alice <noreply@alice.cozy.test>"
    assert message.get_body(("plain",)).get_content().strip() == "Hey !"
    assert "<h1>Hey !</h1>" in message.get_body(("html",)).get_content()
    attachments = {a.get_filename(): a.get_content() for a in message.iter_attachments()}
    assert attachments == {"notes.txt": "some notes\n", "x.bin": bytes(range(256))}


@pytest_twisted.ensureDeferred
async def test_starttls_with_auth(starttls_server):
    mail = build_message(
        {
            "mode": "noreply",
            "subject": "Secure",
            "parts": [{"type": "text/plain", "body": "x"}],
        },
        sender=SENDER,
        owner=OWNER,
    )
    sender = mailer(
        starttls_server.port,
        tls="starttls",
        ca_file=starttls_server.ca,
        username="cozy",
        password="s3cret",
    )
    await sender.send(mail)
    [message] = starttls_server.inbox.messages()
    assert message["Subject"] == "Secure"
    assert message["To"] == "Alice <alice@example.org>"
    # Without credentials the server refuses the mail.
    anonymous = mailer(starttls_server.port, tls="starttls", ca_file=starttls_server.ca)
    with pytest.raises(smtp.SMTPClientError) as refused:
        await anonymous.send(mail)
    assert refused.value.code == 530
    assert len(starttls_server.inbox.received) == 1


@pytest_twisted.ensureDeferred
async def test_starttls_is_required_and_the_certificate_checked(
    plain_server, starttls_server
):
    mail = build_message(FROM_MODE, sender=SENDER, owner=OWNER)
    # The plain server offers no STARTTLS: nothing is sent in clear.
    with pytest.raises(smtp.TLSRequiredError):
        await mailer(plain_server.port, tls="starttls").send(mail)
    assert plain_server.inbox.received == []
    # A certificate of an unknown authority is refused.
    with pytest.raises(Exception):  # noqa: B017 - OpenSSL's or the SMTP client's error
        await mailer(
            starttls_server.port, tls="starttls", username="cozy", password="s3cret"
        ).send(mail)
    assert starttls_server.inbox.received == []


@pytest_twisted.ensureDeferred
async def test_tls_from_the_first_byte(ssl_server):
    mail = build_message(FROM_MODE, sender=SENDER, owner=OWNER)
    await mailer(ssl_server.port, tls="ssl", ca_file=ssl_server.ca).send(mail)
    assert ssl_server.inbox.messages()[0]["Subject"] == "Hey !"


@pytest_twisted.ensureDeferred
async def test_the_sendmail_worker_renders_templates_in_french(plain_server):
    class Settings:
        async def get(self, instance, doctype, doc_id):
            return {"email": "alice@example.org", "public_name": "Alice"}

    @attrs.frozen
    class Instance:
        domain: str = "alice.cozy.test"
        locale: str = "fr"
        prefix: str = "cozyalice"

    worker = SendmailWorker(mailer(plain_server.port))
    context = JobContext(
        instance=Instance(),
        job_id="j1",
        worker="sendmail",
        message={
            "mode": "noreply",
            "template_name": "new_registration",
            "template_values": {
                "device_name": "Mon téléphone",
                "devices_link": "https://x/",
            },
        },
        documents=Settings(),  # type: ignore[arg-type]
    )
    assert await worker.run(context) == {"recipients": 1}
    [message] = plain_server.inbox.messages()
    assert message["Subject"] == "Nouvelle connexion à votre Cozy"
    text = message.get_body(("plain",)).get_content()
    assert "Bonjour Alice," in text and "Mon téléphone" in text
    html = message.get_body(("html",)).get_content()
    assert '<a href="https://x/">Voir vos appareils connectés</a>' in html
    bad = JobContext(
        instance=Instance(),
        job_id="j2",
        worker="sendmail",
        message={"mode": "from", "subject": "x"},
        documents=Settings(),  # type: ignore[arg-type]
    )
    with pytest.raises(WorkerError) as error:
        await worker.run(bad)
    assert error.value.retry is False


@pytest.mark.parametrize(
    "options",
    [
        {"mode": "support"},
        {
            "mode": "from",
            "to": [],
            "subject": "x",
            "parts": [{"type": "text/plain", "body": ""}],
        },
        {
            "mode": "from",
            "to": [{"email": "a@b\r\nBcc: c@d"}],
            "subject": "x",
            "parts": [{"type": "text/plain", "body": ""}],
        },
        {
            "mode": "noreply",
            "subject": "a\r\nBcc: x@y",
            "parts": [{"type": "text/plain", "body": ""}],
        },
        {"mode": "noreply", "subject": "x", "parts": [{"type": "image/png", "body": ""}]},
        {
            "mode": "noreply",
            "subject": "x",
            "parts": [{"type": "text/plain", "body": ""}],
            "attachments": [{"filename": "a", "content": "not base64!"}],
        },
        {"mode": "noreply", "template_name": "nope"},
    ],
)
def test_bad_options_are_refused(options):
    with pytest.raises(MailError):
        build_message(options, sender=SENDER, owner=OWNER)
