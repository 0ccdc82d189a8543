"""The pages' templates (Jinja2): escaping, translations, every template."""

import os
import re

import jinja2
import pytest

from cozyd import i18n
from cozyd.web import pages
from cozyd.web.pages import accept_language, render_template

PAGES = sorted(
    n
    for n in os.listdir(pages.TEMPLATES_DIR)
    if n.endswith(".html") and not n.startswith("_")
)


@pytest.fixture
def template(tmp_path):
    """Render a template source with the pages' environment settings."""
    env = i18n.template_environment(str(tmp_path))

    def render(text, language="en", **context):
        (tmp_path / "t.html").write_text(text, encoding="utf-8")
        return i18n.render(env, "t.html", language, **context)

    return render


def test_values_are_escaped(template):
    out = template('<a title="{{ x }}">{{ x }}</a>', x='"><script>alert(1)</script>&')
    assert "<script>" not in out
    assert out == (
        '<a title="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;">'
        "&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;</a>"
    )


def test_none_and_missing_values_render_as_nothing(template):
    assert template("[{{ a }}|{{ b }}]", a=None) == "[|]"
    assert template("{% if a %}A{% else %}none{% endif %}.", a=None) == "none."


def test_translations_fill_and_escape(template):
    out = template('{{ _("Welcome, %(name)s!", name=who) }}', "fr", who="<b>Alice</b>")
    assert out == "Bienvenue, &lt;b&gt;Alice&lt;/b&gt; !"
    assert template('{{ _("No such message") }}', "fr") == "No such message"


def test_a_translation_cannot_inject_markup(template, monkeypatch):
    words = i18n.words("fr")
    monkeypatch.setattr(words, "gettext", lambda message, **values: "<i>x</i> & y")
    assert (
        template('<p>{{ _("Log in") }}</p>', "fr") == "<p>&lt;i&gt;x&lt;/i&gt; &amp; y</p>"
    )


def test_the_language_is_the_renders(template):
    source = '{{ _("Log in") }} {% trans %}Log out{% endtrans %}'
    assert template(source, "en") == "Log in Log out"
    assert template(source, "fr") == "Se connecter Se déconnecter"
    assert template(source, "de") == "Log in Log out"


def test_templates_stay_in_the_directory():
    with pytest.raises(jinja2.TemplateNotFound):
        render_template("../pages.py", {}, "en")


@pytest.mark.parametrize("name", PAGES)
@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_template_renders(name, language):
    out = render_template(
        name,
        {
            "csp_nonce": "N",
            "domain": "alice.cozy.test",
            "name": "Alice",
            "client_name": "Client",
        },
        language,
    )
    assert out.startswith("<!DOCTYPE html>\n")
    assert f'<html lang="{language}">' in out
    assert out.rstrip().endswith("</html>")
    for tag in re.findall(r"<(?:script|style)\b[^>]*>", out):
        assert 'nonce="N"' in tag, (name, tag)
    # No external asset: no src or href pointing elsewhere than given links.
    assert not re.search(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=", out), name
    assert "{{" not in out and "{%" not in out


def test_pages_speak_french():
    out = render_template("login.html", {"csp_nonce": "N", "domain": "d"}, "fr")
    assert "Se connecter" in out and "Saisissez votre mot de passe" in out
    assert "Log in" not in out


@pytest.mark.parametrize(
    "header,expected",
    [
        ("fr-FR,fr;q=0.9,en;q=0.8", "fr"),
        ("en-US,en;q=0.9", "en"),
        ("de", None),
        ("de;q=1, en;q=0.2, fr;q=0.5", "fr"),
        ("fr;q=0", None),
        ("", None),
        ("fr;q=abc, en", "en"),
    ],
)
def test_accept_language(header, expected):
    assert accept_language(header) == expected
