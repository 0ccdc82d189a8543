"""The translation mechanism (cozyd.i18n) and the completeness of its
catalogs: every message the code and templates use is in every catalog,
translated in French with the same placeholders, and nothing else is."""

import configparser
import fnmatch
import os
import re

import pytest
from babel.messages import extract, frontend
from babel.messages.pofile import read_po

from cozyd import i18n
from cozyd.i18n import N_

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]")


def extracted_messages() -> set[str]:
    """What ``pybabel extract -F babel.cfg -k N_`` finds in the repository."""
    parse = getattr(frontend, "parse_mapping_cfg", None) or frontend.parse_mapping
    with open(os.path.join(ROOT, "babel.cfg"), encoding="utf-8") as f:
        method_map, options_map = parse(f)
    keywords = {**extract.DEFAULT_KEYWORDS, "N_": None}
    found = set()
    for _, _, message, _, _ in extract.extract_from_dir(
        ROOT, method_map, options_map, keywords=keywords
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


def catalog(language):
    with open(i18n.catalog_path(language), "rb") as f:
        return read_po(f)


@pytest.fixture(scope="module")
def used():
    messages = extracted_messages()
    assert "Log in" in messages and "your contacts" in messages  # it found them
    return messages


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_catalogs_hold_exactly_the_messages_used(used, language):
    ids = {m.id for m in catalog(language) if m.id}
    missing, unused = used - ids, ids - used
    assert not missing, f"run pybabel update (cozyd/i18n.py): missing {missing}"
    assert not unused, f"run pybabel update (cozyd/i18n.py): unused {unused}"


def test_french_translates_everything_with_the_same_placeholders(used):
    for message in catalog("fr"):
        if not message.id:
            continue
        assert message.string, f"not translated: {message.id!r}"
        assert not message.fuzzy, f"fuzzy: {message.id!r}"
        assert sorted(PLACEHOLDER.findall(message.id)) == sorted(
            PLACEHOLDER.findall(message.string)
        ), message.id


def test_english_is_the_message_id():
    for message in catalog("en"):
        if message.id:
            assert not message.string or message.string == message.id, message.id


def test_words():
    fr = i18n.words("fr")
    assert fr.language == "fr"
    assert fr.gettext("Log in") == "Se connecter"
    assert fr.gettext("Welcome, %(name)s!", name="Alice") == "Bienvenue, Alice !"
    assert fr.gettext("Not a message of cozyd") == "Not a message of cozyd"
    # Without values, a message is not a format (a lone % stays).
    assert fr.gettext("100%") == "100%"
    assert i18n.words("en").gettext("Log in") == "Log in"
    assert i18n.words("fr").gettext(N_("Deny")) == "Refuser"
    assert i18n.words("en").ngettext("%(num)d tab", "%(num)d tabs", 2) == "2 tabs"
    assert i18n.words("en").ngettext("%(num)d tab", "%(num)d tabs", 1) == "1 tab"


@pytest.mark.parametrize(
    "locale,language",
    [
        ("fr", "fr"),
        ("fr_FR", "fr"),
        ("FR-ca", "fr"),
        ("en_GB", "en"),
        ("de", "en"),
        ("", "en"),
        (None, "en"),
    ],
)
def test_words_of_any_locale(locale, language):
    assert i18n.words(locale).language == language


def test_fuzzy_entries_are_not_used(tmp_path):
    po = tmp_path / "x.po"
    po.write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=utf-8\\n"\n\n'
        '#, fuzzy\nmsgid "Log in"\nmsgstr "Entrer"\n\n'
        'msgid "Log out"\nmsgstr "Sortir"\n',
        encoding="utf-8",
    )
    translations = i18n.load_translations(str(po))
    assert translations.gettext("Log in") == "Log in"
    assert translations.gettext("Log out") == "Sortir"


def test_the_package_ships_the_catalogs_and_templates():
    """setup.cfg's package_data globs cover every catalog and template, so a
    plain (non-editable) install has them."""
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    # "*": the patterns apply in every package (find_namespace: makes each
    # directory under cozyd/ one).
    patterns = [
        p.strip()
        for p in config["options.package_data"]["*"].replace("\n", ",").split(",")
        if p.strip()
    ]
    package = os.path.join(ROOT, "cozyd")
    shipped = set()
    needed = set()
    for folder, _, files in os.walk(package):
        for name in files:
            path = os.path.relpath(os.path.join(folder, name), package)
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                shipped.add(path)
            if name.endswith((".po", ".html")):
                needed.add(path)
    assert needed and needed <= shipped, needed - shipped
    requirements = config["options"]["install_requires"]
    assert "Jinja2" in requirements and "Babel" in requirements
