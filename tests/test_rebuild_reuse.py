"""Reusing one rebuild of the template's HTML for every recipient gives each of them the very
message a rebuild of their own would give: compared on fuzzed templates and hostile values."""
from __future__ import annotations

import random
from datetime import date
from pathlib import Path

import pytest
from conftest import Project

from mailer.addresses import normalise
from mailer.config import load_campaign, load_config
from mailer.contacts import ContactData
from mailer.render import Renderer, load_templates
from mailer.tokens import Keys

V = ["{{ contact.first_name }}", "{{ contact.last_name }}", "{{ contact.company }}", "{{ contact.attrs.code }}",
     "{{ contact.first_name|safe }}", "{{ contact.company|upper }}", "{{ contact.email }}"]

# Template pieces: plain markup, and the places where a value is not plain text.
PIECES = [
    "<p>Bonjour {v},</p>", "<div><p>{v}</p></div>", "<table><tr><td>{v}</td></tr></table>", "<table>{v}<tr><td>x</td></tr></table>",
    "<p><{v}>texte</p>", "<p></{v}>", "<p><!{v}></p>", "<p>AT&{v}</p>", "<p>&co{v}</p>", "<p>&#{v}</p>",
    "<p title=\"{v}\">x</p>", "<p style=\"color:{v}\">x</p>", "<a href=\"https://x.example/?n={v}\">site</a>",
    "<a href=\"https://x.example/\">{v}</a>", "<a href=\"https://x.example/\">Uns{v}</a>", "{v}<a href=\"https://x.example/\">scribe</a>",
    "<a href=\"https://x.example/\">Unsub</a>{v}", "<a href=\"{{{{ unsubscribe_url }}}}\">{v} se désabonner</a>",
    "<a href=\"{{{{ unsubscribe_url }}}}\">{{{{ unsubscribe_url }}}}</a>", "<title>{v}</title>", "<textarea>{v}</textarea>",
    "<style>.a{{color:red}} /* {v} */</style>", "<!-- {v} -->", "<!--[if mso]>{v}<![endif]-->", "<pre>\n{v}\n\n\n\n\n\n</pre>",
    "<p>{v}</p><p>{v}</p><p>{v}</p><p>{v}</p><p>{v}</p><p>{v}</p>", "<div style=\"height:900px\">{v}</div>",
    "{{% if contact.company %}}<p>chez {v}</p>{{% endif %}}", "{{% if contact.first_name == 'Unsub' %}}<a href=\"https://x.example/\">Unsub</a>{{% endif %}}",
    "<p>{v}<br><br><br><br><br><br>x</p>", "<b>{v}</b><i>{v}</i>", "<p>{{{{ contact.first_name }}}}{{{{ contact.last_name }}}}</p>",
    "<img alt=\"{v}\" src=\"https://x.example/i.png\">", "<select><option>{v}</option></select>", "<svg>{v}</svg>",
    # a character reference padded past any fixed look-back, completed by the value
    "<p><a href=\"https://x.example/\">&#" + "0" * 45 + "{v}</a></p>", "<p>&#x" + "0" * 45 + "{v}</p>",
    # blank runs around values made of other blanks; values moved by the parser (tables, head)
    "<p>x" + "<br><br><br>{v}" * 6 + "<br>y</p>", "<pre>x" + "\n\n\n\n{v}" * 6 + "\ny</pre>",
    "<table><colgroup>{v}<col></colgroup><tr><td>x</td></tr></table>",
]
VALUES = ["Claire", "Jean-Pierre O'Neil", "textarea", "lt;x", "lt x", "py", "opy", "Unsub", "scribe", "unsubscribe",
          "", " ", "\u200b", "\xa0", "<b>gras</b>", "&amp", "&", "a & b", "\"quoted\"", "Zoé 😀", "שלום", "\ue0000\ue001",
          "\ue002", "x\ny", "x\r\ny", "a\x00b", "\u2028", "--", "![CDATA[", "script", "/p", "br", "-->", "désabonner",
          "Opt", "-out", "UNSUB", "SCRIBE", "1", "0", "85;nsubscribe", "41;x", "\u2001", "\u2000\u202f", " x",
          "x ", "\u1680"]


def contact(rng: random.Random, i: int) -> ContactData:
    pick = lambda: rng.choice(VALUES)  # noqa: E731
    return ContactData(address=normalise(f"p{i}@client.example"), kind=rng.choice(["b2b", "b2c"]),
                       first_name=pick(), last_name=pick(), company=pick(), source="Salon VivaTech 2026",
                       collected_at=date(2026, 6, 1), attrs={"code": pick()})


def outcome(renderer: Renderer, person: ContactData) -> object:
    try:
        message = renderer.render(person)
    except Exception as exc:  # noqa: BLE001 - a template error must be the same both ways too
        return ("error", str(exc))
    return message.html_pieces, message.footer_problems, message.notes, message.text_pieces


@pytest.mark.parametrize("seed", range(12))
def test_a_reused_rebuild_is_the_rebuild_of_each_message(project: Project, seed: int) -> None:
    rng = random.Random(seed)
    config = load_config(project.config)
    reused_at_least_once = 0
    for case in range(10):
        body = "".join(rng.choice(PIECES).format(v=rng.choice(V)) for _ in range(rng.randint(1, 6)))
        if case == 0:  # one that a probe can stand for, whatever the draw
            body = PIECES[0].format(v=V[0]) + PIECES[1].format(v=V[2])
        project.write("templates/offer.html.j2", f"<html><body><p>Bonjour</p>{body}</body></html>")
        campaign = load_campaign(project.campaign)
        templates = load_templates(campaign)
        keys = Keys.derive(b"k" * 32)
        reusing = Renderer(config, campaign, keys, templates)
        fresh = Renderer(config, campaign, keys, templates)
        fresh.reuse_rebuilds = False
        people = [contact(rng, i) for i in range(25)]
        for person in people:
            assert outcome(reusing, person) == outcome(fresh, person), (body, person)
        reused_at_least_once += any(r is not None for r in reusing._reuse.values())
    assert reused_at_least_once  # the comparison covered the reuse, not only its refusals


def test_the_sample_campaign_reuses_its_rebuild(project: Project) -> None:
    config = load_config(project.config)
    campaign = load_campaign(project.campaign)
    renderer = Renderer(config, campaign, Keys.derive(b"k" * 32), load_templates(campaign))
    for i in range(3):
        renderer.render(ContactData(address=normalise(f"p{i}@client.example"), kind="b2b", first_name=f"P{i}",
                                    company="Client", source="Salon", collected_at=date(2026, 6, 1)))
    assert list(renderer._reuse.values()) != [None] and len(renderer._reuse) == 1


def test_marks_are_private_use_characters_no_value_can_forge(project: Project, tmp_path: Path) -> None:
    # A value holding the marks' characters is never substituted: it is rebuilt on its own.
    config = load_config(project.config)
    campaign = load_campaign(project.campaign)
    renderer = Renderer(config, campaign, Keys.derive(b"k" * 32), load_templates(campaign))
    fresh = Renderer(config, campaign, Keys.derive(b"k" * 32), load_templates(campaign))
    fresh.reuse_rebuilds = False
    for name in ("Claire", "\ue0000\ue001", "\ue002", "x\ue001"):
        person = ContactData(address=normalise("p@client.example"), kind="b2b", first_name=name, company="C",
                             source="S", collected_at=date(2026, 6, 1))
        assert outcome(renderer, person) == outcome(fresh, person)
