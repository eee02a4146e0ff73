"""`footer-missing`: a template that hides the footer does not get through."""
from __future__ import annotations

import pytest
from conftest import Project, counts

HIDING_TEMPLATES = {
    "unclosed comment": "<p>Hi {{ contact.first_name }}</p><!-- the rest is a comment\n",
    "unclosed textarea": "<p>Hi</p><textarea>\n",
    "unclosed style": "<p>Hi</p><style>\n",
    "unclosed title": "<title>Hi\n",
    "unclosed attribute": "<p>Hi</p><div title=\"\n",
    "display none wrapper": "<div style=\"display:none\"><p>Hi</p>\n",
    "visibility hidden wrapper": "<div style=\"visibility: hidden\"><p>Hi</p>\n",
    "zero height wrapper": "<div style=\"max-height:0;overflow:hidden\"><p>Hi</p>\n",
    "off-screen wrapper": "<div style=\"position:absolute;left:-9999px\"><p>Hi</p>\n",
    "hidden attribute": "<div hidden><p>Hi</p>\n",
    "template element": "<template><p>Hi</p>\n",
    "noscript element": "<noscript><p>Hi</p>\n",
    "opacity wrapper": "<div style=\"opacity:0.01\"><p>Hi</p>\n",
    "stylesheet id rule": "<style>#mailer-footer { display: none !important }</style><p>Hi</p>",
    "stylesheet on links": "<style>a { display: none !important; }</style><p>Hi</p>",
    "stylesheet in media query": "<style>@media screen { body { display: none } }</style><p>Hi</p>",
    "stylesheet on last div": "<style>body > div:last-child { visibility: hidden !important }</style><p>Hi</p>",
    "hover trick": "<style>div:hover, div { opacity: 0 !important }</style><p>Hi</p>",
    "external stylesheet": "<link rel=\"stylesheet\" href=\"https://x.example/a.css\"><p>Hi</p>",
    "import": "<style>@import url(https://x.example/a.css);</style><p>Hi</p>",
    "body closed inside comment": "<p>Hi</p><!-- </body> -->\n",
    "conditional comment per contact": "{% if contact.first_name == 'Claire' %}<!--{% endif %}<p>Hi</p>\n",
    "white block laid over it": "<p>Hi</p><div style=\"position:absolute;bottom:0;left:0;width:100%;height:300px;"
                                "background:#fff\"></div>",
    "fixed veil from the stylesheet": "<style>@media screen { .veil { position: fixed; bottom: 0; height: 40%; "
                                      "background: white } }</style><div class='veil'></div><p>Hi</p>",
    "negative margin pulls it under": "<div style=\"margin-bottom:-400px;height:400px;background:#fff\"><p>Hi</p></div>",
    "block shifted down": "<div style=\"position:relative;top:300px;height:300px;background:#fff\"></div><p>Hi</p>",
    "transformed block": "<style>.down { transform: translateY(250px) }</style><div class=\"down\">x</div><p>Hi</p>",
    "image laid over it": "<p>Hi</p><img src=\"https://x.example/w.png\" style=\"position:absolute;bottom:0\">",
}


@pytest.mark.parametrize("name", sorted(HIDING_TEMPLATES))
def test_a_template_that_hides_the_footer_is_blocked(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", HIDING_TEMPLATES[name])
    check = project.run("check", str(project.campaign), "--no-dns")
    assert check.exit_code == 0, check.output
    blocked = counts(check.output).get("footer-missing", 0)
    expected = 1 if name == "conditional comment per contact" else 2
    assert blocked == expected, check.output
    send = project.send()
    assert send.exit_code == 0
    assert len(project.messages()) == 2 - expected
    rows = project.sql("select rule, detail from send_log where rule = 'footer-missing'")
    assert len(rows) == expected and all(detail for _, detail in rows)


VISIBLE_TEMPLATES = {
    "plain": "<p>Hi {{ contact.first_name }}</p>",
    "full document": "<!doctype html><html><head><title>x</title><style>p{color:#333}</style></head>"
                     "<body><p>Hi</p></body></html>",
    "responsive hiding of other content": "<style>@media (max-width:600px){ .wide{display:none} }</style>"
                                         "<p class='wide'>Wide</p><p>Hi</p>",
    "global font reset": "<style>* { font-size: 0; color: transparent }</style><p>Hi</p>",
    "table layout": "<table><tr><td><p>Hi</p></td></tr></table>",
    "unclosed table cell": "<table><tr><td><p>Hi",
    "unclosed div": "<div class='content'><p>Hi</p>",
    "relative position without offset": "<div style=\"position:relative\"><p>Hi</p></div>",
    "small negative margin": "<p style=\"margin:-2px 0 0 0\">Hi</p>",
    "positioning rule for an absent class": "<style>.popup { position: absolute }</style><p>Hi</p>",
    "zero offsets": "<div style=\"position:relative;top:0;left:0px\"><p>Hi</p></div>",
}


@pytest.mark.parametrize("name", sorted(VISIBLE_TEMPLATES))
def test_ordinary_templates_pass(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", VISIBLE_TEMPLATES[name])
    check = project.run("check", str(project.campaign), "--no-dns")
    assert check.exit_code == 0, check.output
    assert "footer-missing" not in counts(check.output), check.output
    assert counts(check.output)["allowed"] == 2


def test_preview_lists_the_reason(project: Project) -> None:
    project.write("templates/offer.html.j2", "<div style='display:none'>{{ contact.first_name }}")
    result = project.run("preview", str(project.campaign), "--out", str(project.root / "p"))
    assert result.exit_code == 0
    assert "footer-missing" in result.output and "display:none" in result.output
