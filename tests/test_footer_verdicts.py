"""Reusing the footer check's verdict across messages never changes any message's verdict.

The renderer checks the first message of each markup in full and reuses the
verdict for messages that differ from it only by text (FooterVerdicts). Here
each message's verdict is compared with a full check of that message, for
templates that put the recipient's values everywhere a value could change the
markup: attributes, attribute names, tag names, stylesheets, comments, <title>,
<textarea>, the <head>, branches.
"""
from __future__ import annotations

import csv
import dataclasses
from datetime import date

import pytest
from conftest import Project

from mailer import open_workspace
from mailer.contacts import parse_contacts_csv
from mailer.planning import prepare_campaign
from mailer.visibility import check_footer_html, check_footer_text

LOOKS = ["block", "none", "hidden", "textarea", "div", "title", "Bonjour à tous", "   ", "", "AT&T", "x < y",
         "display:none", "visibility:hidden", "a\"b", "mailer-footer", "--", "-->", "<!--", "none !important"]
NAMES = ["Claire", "Paul", "Zoé", "Jean-Marc", "Al", "O'Neil", "<b>Bob</b>"]

TEMPLATES = {
    "value in a style attribute": '<div style="display: {{ contact.attrs.look }}"><p>Hi {{ contact.first_name }}</p>',
    "value in a stylesheet": "<style>.x { display: {{ contact.attrs.look }} }</style>"
                             '<div class="x"><p>Hi {{ contact.first_name }}</p>',
    "value as a class": '<style>.none, .hidden { display: none }</style>'
                        '<div class="{{ contact.attrs.look }}"><p>Hi {{ contact.first_name }}</p>',
    "value as a tag name": "<p>Hi {{ contact.first_name }}</p><{{ contact.attrs.look }}>",
    "value as an attribute name": "<p>Hi {{ contact.first_name }}</p><div {{ contact.attrs.look }}>",
    "value as an id": '<p>Hi {{ contact.first_name }}</p><div id="{{ contact.attrs.look }}">',
    "value in a comment": "<p>Hi {{ contact.first_name }}</p><!-- {{ contact.attrs.look }} -->",
    "value in an unclosed comment": "<p>Hi {{ contact.first_name }}</p><!-- {{ contact.attrs.look }}",
    "value in the title": "<title>{{ contact.attrs.look }}</title><p>Hi {{ contact.first_name }}</p>",
    "value in a textarea": "<p>Hi {{ contact.first_name }}</p><textarea>{{ contact.attrs.look }}</textarea>",
    "value in the head": "<html><head>{{ contact.attrs.look }}<style>p { color: #333 }</style></head>"
                         "<body><p>Hi {{ contact.first_name }}</p></body></html>",
    "value before a table": "<table>{{ contact.attrs.look }}<tr><td>Hi {{ contact.first_name }}</td></tr></table>",
    "branch on the value": "{% if contact.attrs.look == 'none' %}<div style='display:none'>{% endif %}"
                           "<p>Hi {{ contact.first_name }}</p>",
    "ordinary text": "<html><body><p>Bonjour {{ contact.first_name }} ({{ contact.attrs.look }}),</p>"
                     "<p>{{ contact.company }}</p></body></html>",
}


def _contacts(project: Project) -> list:
    path = project.root / "many.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        out = csv.writer(handle)
        out.writerow(["email", "first_name", "company", "job_title", "kind", "source", "collected_at", "look"])
        i = 0
        for name in NAMES:
            for look in LOOKS:
                out.writerow([f"p{i}@c{i % 3}.example", name, f"{look} SA", "CTO", "b2b",
                              "Salon VivaTech 2026", "2026-06-01", look])
                i += 1
    return parse_contacts_csv(path, today=date(2026, 11, 29)).records


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_message_gets_the_verdict_a_full_check_gives(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", TEMPLATES[name])
    ws = open_workspace(project.config, {"MAILER_SECRET": "s" * 32})
    try:
        renderer = prepare_campaign(ws, project.campaign).renderer
        organization = renderer.organization
        for contact in _contacts(project):
            rendered = renderer.render(contact)
            required = [organization.name, organization.postal_address, renderer.source_sentence(contact)]
            full = check_footer_text(rendered.text, required, rendered.unsubscribe_url) + \
                check_footer_html(rendered.html, required, rendered.unsubscribe_url)
            assert list(rendered.footer_problems) == full, (contact.first_name, contact.attrs)
    finally:
        ws.close()


@pytest.mark.parametrize("source", ["<p>Hi</p><{{ contact.attrs.look }}>", "<p>Hi</p><div {{ contact.attrs.look }}>",
                                    "<p>Hi</p><te{{ contact.attrs.look }}>", "<p>Hi</p><!{{ contact.attrs.look }}"])
def test_a_value_that_reads_as_text_does_not_vouch_for_one_that_opens_markup(project: Project, source: str) -> None:
    # Right after "<", "-->" reads as text, as the mask does; "textarea", "hidden" or "--" open markup.
    project.write("templates/offer.html.j2", source)
    ws = open_workspace(project.config, {"MAILER_SECRET": "s" * 32})
    try:
        renderer = prepare_campaign(ws, project.campaign).renderer
        claire = next(c for c in _contacts(project) if c.first_name == "Claire")
        hidden = 0
        for look in ("-->", "textarea", "hidden", "xtarea hidden", "--", "title"):
            contact = dataclasses.replace(claire, attrs={"look": look})
            rendered = renderer.render(contact)
            required = [renderer.organization.name, renderer.organization.postal_address,
                        renderer.source_sentence(contact)]
            full = check_footer_html(rendered.html, required, rendered.unsubscribe_url)
            assert list(rendered.footer_problems) == full, look
            hidden += bool(full)
        assert hidden  # the hazard is there: some of these values do hide the footer
    finally:
        ws.close()


def test_the_verdict_is_reused_for_messages_that_differ_only_by_text(project: Project) -> None:
    ws = open_workspace(project.config, {"MAILER_SECRET": "s" * 32})
    try:
        renderer = prepare_campaign(ws, project.campaign).renderer
        contacts = _contacts(project)
        for contact in contacts:
            assert renderer.render(contact).footer_problems == ()
        # Names of 3 characters or more are masked; "Al" and "<b>Bob</b>" (escaped: no quotes,
        # but 2 characters / markup-looking text) leave their own keys.
        assert renderer.footer_verdicts.reused >= len(contacts) * 0.7
    finally:
        ws.close()


BLOCKS = [
    "<p>Hi {{ contact.first_name }}</p>", "<div>", "</div>", "<div class='{{ contact.attrs.look }}'>",
    "<span style='{{ contact.attrs.look }}'>x</span>", "<div style='color: {{ contact.attrs.look }}'>",
    "<{{ contact.attrs.look }}>", "<div {{ contact.attrs.look }}>", "<!-- {{ contact.attrs.look }} -->", "<!--",
    "<style>.none { display: none } .{{ contact.attrs.look }} { color: red }</style>", "<title>{{ contact.attrs.look }}",
    "</title>", "<textarea>{{ contact.first_name }}", "</textarea>", "<table><tr><td>{{ contact.company }}",
    "</td></tr></table>", "{% if contact.attrs.look == 'none' %}<div style='display:none'>{% endif %}",
    "<p title=\"{{ contact.attrs.look }}\">{{ contact.company }}</p>", "{{ contact.attrs.look }}", "<br>",
    "<span>{{ contact.first_name }} {{ contact.company }}</span>", "<head>", "</head><body>", "<p class=none>",
]


def test_fuzzed_templates_get_the_verdict_a_full_check_gives(project: Project) -> None:
    import random
    rng = random.Random(29112026)
    contacts = _contacts(project)
    ws = open_workspace(project.config, {"MAILER_SECRET": "s" * 32})
    try:
        checked = hidden = reused = 0
        for _ in range(60):
            source = "".join(rng.choice(BLOCKS) for _ in range(rng.randint(1, 7)))
            project.write("templates/offer.html.j2", source)
            renderer = prepare_campaign(ws, project.campaign).renderer
            organization = renderer.organization
            for contact in rng.sample(contacts, 25):
                rendered = renderer.render(contact)
                required = [organization.name, organization.postal_address, renderer.source_sentence(contact)]
                full = check_footer_text(rendered.text, required, rendered.unsubscribe_url) + \
                    check_footer_html(rendered.html, required, rendered.unsubscribe_url)
                assert list(rendered.footer_problems) == full, (source, contact.first_name, contact.attrs)
                checked += 1
                hidden += bool(full)
            reused += renderer.footer_verdicts.reused
        assert hidden > checked * 0.1 and reused > checked * 0.2  # both verdicts, and reuse, well represented
    finally:
        ws.close()
