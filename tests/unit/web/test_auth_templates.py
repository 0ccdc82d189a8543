"""The page renderer: escaping, conditions, translations, every template."""

import json
import os
import re

import pytest

from cozyd.web import pages
from cozyd.web.pages import accept_language, render_template, translate


@pytest.fixture
def template(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "TEMPLATES_DIR", str(tmp_path))
    pages._compile.cache_clear()

    def write(name, text):
        (tmp_path / name).write_text(text, encoding="utf-8")
    yield write
    pages._compile.cache_clear()


def test_values_are_escaped(template):
    template("t.html", '<a title="{{ x }}">{{ x }}</a>')
    out = render_template("t.html", {"x": '"><script>alert(1)</script>&'}, "en")
    assert "<script>" not in out
    assert out == ('<a title="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;">'
                   '&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;</a>')


def test_conditions_nest(template):
    template("t.html", "{% if a %}A{% if not b %}!b{% else %}b{% endif %}{% else %}"
                       "none{% endif %}.")
    assert render_template("t.html", {"a": 1}, "en") == "A!b."
    assert render_template("t.html", {"a": 1, "b": "x"}, "en") == "Ab."
    assert render_template("t.html", {}, "en") == "none."


def test_translations_fill_and_escape(template):
    template("t.html", '{% t "login.welcome_name" %}')
    out = render_template("t.html", {"public_name": "<b>Alice</b>"}, "fr")
    assert out == "Bienvenue, &lt;b&gt;Alice&lt;/b&gt; !"
    assert translate("en", "no.such.key") == "no.such.key"


@pytest.mark.parametrize("source", ["{{ a.b }}", "{% for x %}", "{% if a %}",
                                    "{{ a|raw }}"])
def test_bad_templates(template, source):
    template("t.html", source)
    with pytest.raises(pages.TemplateError):
        render_template("t.html", {}, "en")


def test_template_names_stay_in_the_directory():
    with pytest.raises(pages.TemplateError):
        render_template("../x.html", {}, "en")


def test_locales_have_the_same_keys():
    keys = {}
    for language in pages.LANGUAGES:
        with open(os.path.join(pages.LOCALES_DIR, f"{language}.json"),
                  encoding="utf-8") as f:
            keys[language] = set(json.load(f))
    assert keys["en"] == keys["fr"]


@pytest.mark.parametrize("name", sorted(
    n for n in os.listdir(pages.TEMPLATES_DIR) if n.endswith(".html")))
@pytest.mark.parametrize("language", pages.LANGUAGES)
def test_every_template_renders(name, language):
    out = render_template(name, {"csp_nonce": "N", "lang": language,
                                 "domain": "alice.cozy.test"}, language)
    with open(os.path.join(pages.TEMPLATES_DIR, name), encoding="utf-8") as f:
        used = re.findall(r'\{% t "([^"]+)" %\}', f.read())
    for key in used:
        assert key in pages.messages(language) or key in pages.messages("en"), key
    for tag in re.findall(r"<(?:script|style)\b[^>]*>", out):
        assert 'nonce="N"' in tag, (name, tag)


@pytest.mark.parametrize("header,expected", [
    ("fr-FR,fr;q=0.9,en;q=0.8", "fr"), ("en-US,en;q=0.9", "en"), ("de", None),
    ("de;q=1, en;q=0.2, fr;q=0.5", "fr"), ("fr;q=0", None), ("", None),
    ("fr;q=abc, en", "en")])
def test_accept_language(header, expected):
    assert accept_language(header) == expected
