"""A template that would hide the footer cannot: it is refused, or rebuilt so it cannot reach it."""
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


def footer_is_out_of_reach(message: bytes) -> None:
    """The footer is the last child of <body>, after the template's box, and every rule of the
    template's stylesheets is scoped inside that box: nothing of the template can select it."""
    import email
    from email import policy

    import tinycss2
    from selectolax.lexbor import LexborHTMLParser

    html = email.message_from_bytes(message, policy=policy.default).get_body(("html",)).get_content()
    tree = LexborHTMLParser(html)
    children = [n for n in tree.body.iter() if n.is_element_node]
    assert [n.id for n in children] == ["mailer-content", "mailer-footer"], html[:300]
    for style in tree.css("style"):
        for rule in tinycss2.parse_stylesheet(style.text(), skip_whitespace=True, skip_comments=True):
            rules = [rule]
            if rule.type == "at-rule" and rule.lower_at_keyword in ("media", "supports"):
                rules = tinycss2.parse_rule_list(rule.content, skip_whitespace=True, skip_comments=True)
            for inner in rules:
                if inner.type == "qualified-rule":
                    for selector in tinycss2.serialize(inner.prelude).split(","):
                        assert selector.strip().startswith("#mailer-content"), selector


@pytest.mark.parametrize("name", sorted(HIDING_TEMPLATES))
def test_a_template_that_hides_the_footer_is_refused_or_cannot_reach_it(project: Project, name: str) -> None:
    """Either the template is refused as a whole (exit 3, naming it, nothing sent), or it is
    rebuilt around the footer: then both messages go, with the footer out of its reach.
    (What a browser shows of these is judged in test_footer_judge.py.)"""
    project.write("templates/offer.html.j2", HIDING_TEMPLATES[name])
    check = project.run("check", str(project.campaign), "--no-dns")
    assert check.exit_code in (0, 3), check.output
    send = project.send()
    if check.exit_code == 3:
        assert "offer.html.j2" in check.output and "NOT OK" in check.output
        assert send.exit_code == 3 and project.messages() == []
        return
    assert send.exit_code == 0, send.output
    assert len(project.messages()) == 2
    for message in project.messages():
        footer_is_out_of_reach(message)


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


def test_a_refusal_names_the_template_and_the_element(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>Hi</p>\n<iframe src='https://x.example'></iframe>")
    result = project.run("preview", str(project.campaign), "--out", str(project.root / "p"))
    assert result.exit_code == 3
    assert "offer.html.j2:2: <iframe> is not allowed" in result.output


def test_what_is_left_out_is_said(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>Hi</p>\n\n<div style='position:absolute;bottom:0;color:#333'>Hi</div>")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 0, result.output
    assert "offer.html.j2:3: <div style>: position: absolute was left out" in result.output


def test_elements_tall_for_what_they_show_share_the_spacers_budget(project: Project) -> None:
    """Sixty 1,400px paragraphs showing one near-white dot each put the footer 84,000px down; each
    was under the one-element limit and showed a character, so none counted as a spacer."""
    project.write("templates/offer.html.j2", "<p>Hi {{ contact.first_name }}</p>"
                  + '<p style="height:1400px;margin:0;color:#fefefe">.</p>' * 60
                  + '<p style="padding:12px 0">A paragraph of ordinary text keeps its spacing.</p>')
    out = project.root / "p"
    result = project.run("preview", str(project.campaign), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "its height and vertical spacing were left out" in result.output
    html = next(out.glob("*.eml")).read_bytes().decode("ascii", "replace")
    assert html.count("height:1400px") <= 1  # within the 2,000px budget: one of them
    assert "padding:12px 0" in html


SPLIT_UNSUBSCRIBE = {
    "two links": '<p>Hi {{ contact.first_name }}</p><p><a href="https://x.example/a">Unsub</a>'
                 '<a href="https://x.example/b">scribe</a></p>',
    "word around a link": '<p>Hi</p><p>Uns<a href="https://x.example/u">ubscribe</a> here</p>',
    "link then the rest": '<p>Hi</p><p><a href="https://x.example/u">Désa</a>bonnement</p>',
    "bold piece then link": '<p>Hi</p><p><b>Opt</b><a href="https://x.example/u">-out</a></p>',
    "our link then theirs": '<p>Hi</p><p><a href="{{ unsubscribe_url }}">Unsub</a>'
                            '<a href="https://x.example/u">scribe</a></p>',
}


@pytest.mark.parametrize("name", sorted(SPLIT_UNSUBSCRIBE))
def test_an_unsubscribe_word_split_around_links_is_read_whole(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", SPLIT_UNSUBSCRIBE[name])
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 3, result.output
    assert "offer.html.j2:" in result.output and "a link offering to unsubscribe" in result.output
    assert "https://x.example/" in result.output


def test_words_next_to_links_are_not_read_as_unsubscribing(project: Project) -> None:
    project.write("templates/offer.html.j2", '<p>Hi</p><p><a href="https://x.example/">Home</a><a href='
                  '"https://x.example/s">Shop</a><a href="https://x.example/o">Out</a>lets</p><p>To unsubscribe, '
                  'use the link at the bottom.</p>'
                  '<p><a href="https://x.example/p">Subscribe</a> to our other list.</p>')
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 0, result.output


def test_a_font_face_for_a_generic_family_is_left_out_even_after_another_font_family() -> None:
    """Browsers read a face's last font-family; the check read the first one."""
    from mailer.isolation import isolate
    css = ('@font-face { font-family: Brand; font-family: "sans-serif"; src: local("DejaVu Sans"); '
           'size-adjust: 1%; }')
    done = isolate(f"<style>{css}</style><p>Bonjour</p>", "https://mail.acme.example/u/t")
    assert "sans-serif" not in done.style
    assert any("generic family" in n for n in done.notes)
