"""Permissions in words, for the person who grants them (the OAuth consent
page; later sharing and app install pages): ``Read your contacts``.

The words come from the gettext catalogs (``cozyd.i18n``); a sentence is
built from translated pieces whose order the translation may change
(``%(action)s %(what)s``).
"""

from __future__ import annotations

from cozyd.i18n import N_, Words, words
from cozyd.permissions.rules import ALL_VERBS, PermissionSet, Rule

#: What a doctype holds, in words.
DOCTYPE_WORDS = {
    "io.cozy.files": N_("your files and folders"),
    "io.cozy.files.versions": N_("the previous versions of your files"),
    "io.cozy.contacts": N_("your contacts"),
    "io.cozy.contacts.groups": N_("your groups of contacts"),
    "io.cozy.calendar.events": N_("your calendar events"),
    "io.cozy.calendar": N_("your calendars"),
    "io.cozy.apps": N_("your applications"),
    "io.cozy.konnectors": N_("your connectors"),
    "io.cozy.accounts": N_("the accounts of your connectors"),
    "io.cozy.bills": N_("your bills"),
    "io.cozy.bank": N_("your banking data"),
    "io.cozy.bank.accounts": N_("your bank accounts"),
    "io.cozy.bank.operations": N_("your bank transactions"),
    "io.cozy.bank.groups": N_("your groups of bank accounts"),
    "io.cozy.bank.settings": N_("your banking settings"),
    "io.cozy.jobs": N_("your background tasks"),
    "io.cozy.triggers": N_("the schedules of your background tasks"),
    "io.cozy.notifications": N_("your notifications"),
    "io.cozy.settings": N_("your settings"),
    "io.cozy.permissions": N_("the permissions of your apps and shared links"),
    "io.cozy.oauth.clients": N_("the devices and programs connected to your cozy"),
    "io.cozy.sharings": N_("your sharings"),
    "io.cozy.photos.albums": N_("your photo albums"),
    "io.cozy.identities": N_("your identities"),
    "io.cozy.tags": N_("your tags"),
    "io.cozy.sessions.logins": N_("the history of your logins"),
    "io.cozy.notes": N_("your notes"),
    "com.bitwarden.ciphers": N_("your saved passwords"),
    "com.bitwarden.folders": N_("the folders of your passwords"),
    "com.bitwarden.profiles": N_("your password manager profile"),
    "com.bitwarden.organizations": N_("your password sharing organizations"),
}

#: Workers a rule restricted to one worker lets the client start.
WORKER_WORDS = {
    "sendmail": N_("Send you emails"),
    "konnector": N_("Run your connectors"),
    "service": N_("Run the services of your applications"),
    "thumbnail": N_("Make thumbnails of your images"),
    "log": N_("Write to the logs of your cozy"),
}

_ACTIONS = (
    ("GET", N_("read")),
    ("POST", N_("create")),
    ("PUT", N_("modify")),
    ("DELETE", N_("delete")),
)


def _join(items: list[str], w: Words) -> str:
    if len(items) == 1:
        return items[0]
    return w.gettext("%(items)s and %(last)s", items=", ".join(items[:-1]), last=items[-1])


def _what(doctype: str, w: Words) -> str:
    wildcard = doctype.endswith(".*")
    base = doctype[:-2] if wildcard else doctype
    known = DOCTYPE_WORDS.get(base)
    if known is not None:
        text = w.gettext(known)
        if wildcard:
            text = w.gettext("%(what)s and related data", what=text)
        return text
    if wildcard:
        return w.gettext("documents of type %(doctype)s and its sub-types", doctype=base)
    return w.gettext("documents of type %(doctype)s", doctype=doctype)


def describe_rule(rule: Rule, locale: str = "en") -> str:
    """One rule in words, e.g. ``Read your contacts``."""
    w = words(locale)
    if rule.type == "*":
        return w.gettext("Full access to your whole cozy")
    if (
        rule.type in ("io.cozy.jobs", "io.cozy.triggers")
        and rule.selector == "worker"
        and len(rule.values) == 1
    ):
        known = WORKER_WORDS.get(rule.values[0])
        if known is not None:
            return w.gettext(known)
        return w.gettext(
            "Start background tasks of type “%(worker)s”", worker=rule.values[0]
        )
    if (
        rule.type == "io.cozy.settings"
        and rule.verbs == {"GET"}
        and rule.values == ("io.cozy.settings.disk-usage",)
    ):
        return w.gettext("See how much storage you use")
    if rule.verbs == ALL_VERBS:
        action = w.gettext("read and modify")
    else:
        verbs = set(rule.verbs)
        if "PATCH" in verbs:
            verbs.add("PUT")
        action = _join([w.gettext(word) for verb, word in _ACTIONS if verb in verbs], w)
    text = w.gettext("%(action)s %(what)s", action=action, what=_what(rule.type, w))
    text = text[0].upper() + text[1:]
    if rule.values:
        shown = ", ".join(rule.values[:5]) + (", …" if len(rule.values) > 5 else "")
        if rule.selector:
            text = w.gettext(
                "%(rule)s (only those whose “%(selector)s” is %(values)s)",
                rule=text,
                selector=rule.selector,
                values=shown,
            )
        else:
            text = w.gettext("%(rule)s (only: %(values)s)", rule=text, values=shown)
    return text


def describe_scope(permissions: PermissionSet, locale: str = "en") -> list[str]:
    return [describe_rule(rule, locale) for _, rule in permissions.rules]
