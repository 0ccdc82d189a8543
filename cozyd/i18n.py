"""Words in the owner's language: one gettext catalog per language (en, fr)
for everything a person reads — pages, error pages and messages, and mails.

Usage, from a page, an error or a mail (no web import needed)::

    from cozyd import i18n
    from cozyd.i18n import N_

    words = i18n.words("fr")                  # or i18n.words(instance.locale)
    words.gettext("Log in")                   # 'Se connecter'
    words.gettext("Welcome, %(name)s!", name="Alice")   # placeholders filled
    words.ngettext("%(num)d session", "%(num)d sessions", 3)   # '3 sessions'

    TITLE = N_("Something went wrong")        # marks a message for extraction
    words.gettext(TITLE)                      # translated where it is shown

Templates (pages, and mails later) are Jinja2 templates of an environment
made by ``template_environment``; ``render`` fills one in a language::

    env = i18n.template_environment(TEMPLATES_DIR)           # once
    html = i18n.render(env, "login.html", "fr", domain=...)

In a template, ``{{ _("Log in") }}`` or ``{{ _("Welcome, %(name)s!",
name=public_name) }}`` (Jinja2's "new style" gettext: the message is always
a %-format, write a literal ``%`` as ``%%``), ``{% trans %}…{% endtrans %}``
and ``ngettext`` work too; the language is the context's ``lang``. With
autoescaping on, the translation and the values put in it are escaped.

Message ids are the English text (gettext's usual convention): a message
missing from a catalog shows in English. The catalogs are the ``.po`` files
in ``cozyd/locales/<lang>/LC_MESSAGES/cozyd.po``, shipped as package data.
They are read with Babel's ``read_po`` when a language is first used (then
kept), rather than compiled to ``.mo`` files: the ``.po`` is the only copy,
so an installed wheel can never carry a compiled file older than its
source, and there is no build step to forget. Fuzzy entries are ignored, as
``msgfmt`` ignores them.

Updating the catalogs after adding or changing a message (templates and
Python, configured by ``babel.cfg`` at the top of the repository)::

    pybabel extract -F babel.cfg -k N_ -o build/cozyd.pot .
    pybabel update -i build/cozyd.pot -d cozyd/locales -D cozyd --no-fuzzy-matching

then translate the new ``msgstr`` of ``fr`` (``en`` stays empty: the id is
the English text). ``tests/unit/test_i18n.py`` fails while a message used in
the code is missing from a catalog or untranslated in French.
"""

from __future__ import annotations

import functools
import gettext
import io
import os
from typing import Any

import jinja2
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from markupsafe import escape

LOCALES_DIR = os.path.join(os.path.dirname(__file__), "locales")
DOMAIN = "cozyd"
LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"


def N_(message: str) -> str:
    """Marks ``message`` for extraction; it is translated where it is shown."""
    return message


def catalog_path(language: str, domain: str = DOMAIN) -> str:
    return os.path.join(LOCALES_DIR, language, "LC_MESSAGES", f"{domain}.po")


def language_of_locale(locale: str | None) -> str | None:
    """``fr_FR``, ``fr-fr``, ``FR`` → ``fr``; None when no catalog exists."""
    language = (locale or "").strip().lower().replace("_", "-").split("-")[0]
    return language if language in LANGUAGES else None


class Words:
    """The messages of one language (a thin layer over ``gettext``)."""

    def __init__(self, language: str, translations: gettext.NullTranslations):
        self.language = language
        self._translations = translations

    def gettext(self, message: str, **values: Any) -> str:
        """The translated ``message``, its ``%(name)s`` placeholders filled
        from ``values`` when some are given (plain text: a page escapes it
        when it shows it)."""
        text = self._translations.gettext(message)
        return text % values if values else text

    def ngettext(self, singular: str, plural: str, n: int, **values: Any) -> str:
        """As ``gettext``, choosing the plural form for ``n`` (also given to
        the placeholders as ``num``)."""
        text = self._translations.ngettext(singular, plural, n)
        return text % {"num": n, **values}


def load_translations(path: str) -> gettext.NullTranslations:
    """A ``.po`` file as gettext translations (compiled in memory)."""
    with open(path, "rb") as f:
        catalog = read_po(f)
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


@functools.cache
def _words(language: str) -> Words:
    return Words(language, load_translations(catalog_path(language)))


def words(locale: str | None = None) -> Words:
    """The words of ``locale`` (any spelling: ``fr_FR``…), English when
    cozyd has no catalog for it."""
    return _words(language_of_locale(locale) or DEFAULT_LANGUAGE)


# -- templates ---------------------------------------------------------------------


def _context_words(context: Any) -> Words:
    return words(context.get("lang"))


@jinja2.pass_context
def _template_gettext(context: Any, message: str) -> str:
    text = _context_words(context).gettext(message)
    # Jinja2 marks a translation safe; escape it so that no catalog can
    # inject markup into a page.
    return escape(text) if context.eval_ctx.autoescape else text


@jinja2.pass_context
def _template_ngettext(context: Any, singular: str, plural: str, n: int) -> str:
    text = _context_words(context)._translations.ngettext(singular, plural, n)
    return escape(text) if context.eval_ctx.autoescape else text


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


def template_environment(directory: str, *, autoescape: Any = True) -> jinja2.Environment:
    """A Jinja2 environment for the templates of ``directory``, speaking the
    language of each render's ``lang``. ``autoescape``: True for HTML pages;
    ``jinja2.select_autoescape()`` for a mix of ``.html`` and ``.txt``."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=autoescape,
        extensions=["jinja2.ext.i18n"],
        finalize=_none_as_empty,
        keep_trailing_newline=True,
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=_template_gettext, ngettext=_template_ngettext, newstyle=True
    )
    return env


def render(env: jinja2.Environment, template: str, language: str, /, **context: Any) -> str:
    """The ``template`` filled with ``context``, in ``language``."""
    return env.get_template(template).render(context, lang=language)


def accept_language(header: str) -> str | None:
    """The best of LANGUAGES for an ``Accept-Language`` header."""
    best: tuple[float, str] | None = None
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        language = tag.strip().lower().split("-")[0]
        if language not in LANGUAGES:
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, language)
    return best[1] if best else None
