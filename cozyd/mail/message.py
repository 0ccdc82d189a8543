"""Mail messages: from a ``sendmail`` job's options, or a stack template.

``build_message(options, sender=..., owner=...)`` checks the options of a
``sendmail`` job (``mode``, ``to``, ``subject``, ``parts``,
``attachments``, ``template_name``/``template_values``, ``locale``) and
makes the MIME message; bad options raise ``MailError`` (not worth a
retry). Templates are ``cozyd/mail/templates/<name>.html``, ``.txt`` and
``.subject.txt``, Jinja2 rendered in the instance's language through
``cozyd.i18n``, as the pages are.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import mimetypes
import os
from email.message import EmailMessage
from typing import Any

import attrs
import jinja2

from cozyd import i18n

TEMPLATES_DIR = os.path.join(os.path.dirname(__file__), "templates")
MODES = ("noreply", "from")
#: Bytes of attachments a mail may carry, in all.
MAX_ATTACHMENTS = 10 * 1024 * 1024
MAX_RECIPIENTS = 100


class MailError(Exception):
    """Options that cannot make a mail (the job errors without retry)."""


@attrs.frozen
class Address:
    email: str
    name: str = ""

    def header(self) -> str:
        return email.utils.formataddr((self.name, self.email))


@attrs.frozen
class Mail:
    sender: Address
    recipients: tuple[Address, ...]
    message: EmailMessage

    def as_bytes(self) -> bytes:
        # LF line ends: Twisted's SMTP client sends each line with CRLF.
        return self.message.as_bytes(policy=email.policy.default)


@attrs.frozen
class Owner:
    """What a mail needs of the instance: its domain, owner and language."""

    domain: str
    email: str = ""
    public_name: str = ""
    locale: str = "en"


_env: jinja2.Environment | None = None


def environment() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = i18n.template_environment(
            TEMPLATES_DIR, autoescape=jinja2.select_autoescape(["html"])
        )
    return _env


def template_names() -> list[str]:
    return sorted(
        name[: -len(".subject.txt")]
        for name in os.listdir(TEMPLATES_DIR)
        if name.endswith(".subject.txt")
    )


def render_template(
    name: str, values: dict[str, Any], owner: Owner
) -> tuple[str, list[tuple[str, str]]]:
    """The subject and the parts ``[(type, body)]`` of a stack template."""
    if name not in template_names():
        raise MailError(f"unknown mail template {name!r}")
    env = environment()
    language = i18n.language_of_locale(owner.locale) or i18n.DEFAULT_LANGUAGE
    context = {"domain": owner.domain, "public_name": owner.public_name, **values}
    subject = i18n.render(env, f"{name}.subject.txt", language, **context).strip()
    html = i18n.render(env, f"{name}.html", language, subject=subject, **context)
    text = i18n.render(env, f"{name}.txt", language, **context)
    return subject, [("text/plain", text), ("text/html", html)]


def _address(value: Any) -> Address:
    if not isinstance(value, dict) or not isinstance(value.get("email"), str):
        raise MailError("a recipient is an object with an email")
    name = value.get("name") or ""
    address = value["email"].strip()
    if (
        not isinstance(name, str)
        or "@" not in address
        or any(c in address for c in "\r\n <>,")
        or any(c in name for c in "\r\n")
    ):
        raise MailError(f"invalid address {address!r}")
    return Address(address, name)


def build_message(options: Any, *, sender: Address, owner: Owner) -> Mail:
    if not isinstance(options, dict):
        raise MailError("the message of a sendmail job is an object")
    mode = options.get("mode") or "noreply"
    if mode not in MODES:
        raise MailError(f"mode {mode!r} is not supported (use {' or '.join(MODES)})")
    if mode == "noreply":
        if not owner.email:
            raise MailError("the instance has no email address to write to")
        recipients: tuple[Address, ...] = (Address(owner.email, owner.public_name),)
    else:
        to = options.get("to")
        if not isinstance(to, list) or not to:
            raise MailError("the from mode needs recipients (to)")
        if len(to) > MAX_RECIPIENTS:
            raise MailError(f"at most {MAX_RECIPIENTS} recipients")
        recipients = tuple(_address(item) for item in to)
    template = options.get("template_name")
    if template:
        values = options.get("template_values") or {}
        if not isinstance(values, dict):
            raise MailError("template_values must be an object")
        locale = options.get("locale") or owner.locale
        subject, parts = render_template(
            str(template), values, attrs.evolve(owner, locale=locale)
        )
    else:
        subject = options.get("subject")
        if not isinstance(subject, str) or not subject.strip():
            raise MailError("missing subject")
        raw_parts = options.get("parts")
        if not isinstance(raw_parts, list) or not raw_parts:
            raise MailError("missing content (parts)")
        parts = []
        for part in raw_parts:
            if (
                not isinstance(part, dict)
                or part.get("type") not in ("text/plain", "text/html")
                or not isinstance(part.get("body"), str)
            ):
                raise MailError("a part is {type: text/plain or text/html, body}")
            parts.append((part["type"], part["body"]))
    if any(c in subject for c in "\r\n"):
        raise MailError("the subject is one line")
    message = EmailMessage()
    from_address = sender
    if mode == "from" and owner.public_name:
        from_address = Address(sender.email, owner.public_name)
    message["From"] = from_address.header()
    message["To"] = ", ".join(a.header() for a in recipients)
    if mode == "from" and owner.email:
        message["Reply-To"] = Address(owner.email, owner.public_name).header()
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message["Message-ID"] = email.utils.make_msgid(domain=owner.domain.split(":")[0])
    texts = [body for kind, body in parts if kind == "text/plain"]
    htmls = [body for kind, body in parts if kind == "text/html"]
    message.set_content(texts[0] if texts else "")
    if htmls:
        message.add_alternative(htmls[0], subtype="html")
    _attach(message, options.get("attachments"))
    return Mail(sender, recipients, message)


def _attach(message: EmailMessage, attachments: Any) -> None:
    if attachments is None:
        return
    if not isinstance(attachments, list):
        raise MailError("attachments is a list of {filename, content}")
    total = 0
    for item in attachments:
        if not isinstance(item, dict) or not isinstance(item.get("filename"), str):
            raise MailError("an attachment is {filename, content (base64)}")
        filename = os.path.basename(item["filename"]) or "attachment"
        try:
            data = base64.b64decode(item.get("content") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise MailError(f"the content of {filename!r} is not base64") from None
        total += len(data)
        if total > MAX_ATTACHMENTS:
            raise MailError(f"attachments are limited to {MAX_ATTACHMENTS} bytes")
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        maintype, _, subtype = kind.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
