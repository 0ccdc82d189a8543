"""Permissions in words (the consent page), and small helpers of the routes."""

import pytest

from cozyd.permissions.rules import PermissionSet, parse_rule
from cozyd.permissions.words import describe_rule, describe_scope
from cozyd.web.oauth import allow_form_target, redirect_with


@pytest.mark.parametrize(
    "scope,en,fr",
    [
        ("io.cozy.contacts:GET", "Read your contacts", "Lire vos contacts"),
        (
            "io.cozy.contacts",
            "Read and modify your contacts",
            "Lire et modifier vos contacts",
        ),
        (
            "io.cozy.files:GET,POST",
            "Read and create your files and folders",
            "Lire et créer vos fichiers et dossiers",
        ),
        (
            "io.cozy.files:GET,POST,DELETE",
            "Read, create and delete your files and folders",
            "Lire, créer et supprimer vos fichiers et dossiers",
        ),
        (
            "io.cozy.files:PATCH",
            "Modify your files and folders",
            "Modifier vos fichiers et dossiers",
        ),
        (
            "io.cozy.jobs:POST:sendmail:worker",
            "Send you emails",
            "Vous envoyer des e-mails",
        ),
        (
            "io.cozy.triggers:POST:zip:worker",
            "Start background tasks of type “zip”",
            "Lancer des tâches de fond « zip »",
        ),
        (
            "io.cozy.settings:GET:io.cozy.settings.disk-usage",
            "See how much storage you use",
            "Voir l'espace de stockage utilisé",
        ),
        (
            "io.cozy.bank.*:GET",
            "Read your banking data and related data",
            "Lire vos données bancaires et les données associées",
        ),
        (
            "org.example.things.*:GET",
            "Read documents of type org.example.things and its sub-types",
            "Lire les documents de type org.example.things et de ses sous-types",
        ),
        (
            "org.example.todo:GET",
            "Read documents of type org.example.todo",
            "Lire les documents de type org.example.todo",
        ),
        (
            "io.cozy.files:GET:dir1,dir2",
            "Read your files and folders (only: dir1, dir2)",
            "Lire vos fichiers et dossiers (seulement : dir1, dir2)",
        ),
        (
            "io.cozy.files:GET:io.cozy.apps/photos:referenced_by",
            "Read your files and folders (only those whose “referenced_by” is io.cozy.apps/photos)",
            "Lire vos fichiers et dossiers (seulement ceux dont « referenced_by » vaut "
            "io.cozy.apps/photos)",
        ),
        ("*", "Full access to your whole cozy", "Un accès complet à tout votre cozy"),
    ],
)
def test_rules_in_words(scope, en, fr):
    rule = parse_rule(scope)
    assert describe_rule(rule, "en") == en
    assert describe_rule(rule, "fr") == fr
    assert describe_rule(rule, "fr_FR") == fr


def test_a_scope_in_words_keeps_its_order():
    permissions = PermissionSet.from_scope(
        "io.cozy.files io.cozy.contacts:GET", type="oauth"
    )
    assert describe_scope(permissions) == [
        "Read and modify your files and folders",
        "Read your contacts",
    ]
    assert describe_scope(permissions, "fr") == [
        "Lire et modifier vos fichiers et dossiers",
        "Lire vos contacts",
    ]


def test_long_lists_of_values_are_cut():
    rule = parse_rule("io.cozy.files:GET:a,b,c,d,e,f")
    assert describe_rule(rule) == "Read your files and folders (only: a, b, c, d, e, …)"


def test_redirect_with():
    assert (
        redirect_with("https://c.org/cb?b=1&code=old#frag", code="new", state="s")
        == "https://c.org/cb?b=1&code=new&state=s#"
    )
    assert redirect_with("cozy://cb", code="x y") == "cozy://cb?code=x+y#"


def test_allow_form_target():
    policy = "default-src 'none'; form-action 'self'; base-uri 'none'"
    assert (
        allow_form_target(policy, "https://c.org:8443/cb?x=1")
        == "default-src 'none'; form-action 'self' https://c.org:8443; base-uri 'none'"
    )
    assert (
        allow_form_target(policy, "com.example.app:/cb")
        == "default-src 'none'; form-action 'self' com.example.app:; base-uri 'none'"
    )
    assert allow_form_target(policy, "https://c.org;script-src */cb") == policy
    assert (
        allow_form_target("default-src 'none'", "https://c.org/cb") == "default-src 'none'"
    )
