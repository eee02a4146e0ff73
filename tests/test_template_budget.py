"""A template's work per message is bounded: a runaway loop stops the run before anything is sent."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import SECRET, Project

RUNAWAY = {
    "nested ranges": "<p>Hi {{ contact.first_name }}</p>{% for i in range(100000) %}{% for j in range(100000) %}"
                     "{% endfor %}{% endfor %}",
    "repeated string": "<p>{{ 'x' * 100000000 }}</p>",
    "output flood": "{% for i in range(100000) %}<p>{{ contact.first_name * 20 }}</p>{% endfor %}",
    "huge exponent": "<p>{{ 9 ** 999999 }}</p>",
}


@pytest.mark.parametrize("name", sorted(RUNAWAY))
def test_a_runaway_template_stops_the_send_naming_the_file(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", RUNAWAY[name])
    started = time.monotonic()
    result = project.send()
    assert time.monotonic() - started < 30, "the send hung"
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output and "one message" in result.output
    assert project.messages() == []


RUNAWAY_ON_LINE_4 = {
    "output flood": "{% for i in range(100000) %}<p>{{ contact.first_name * 20 }}</p>{% endfor %}",
    "nested loops writing": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
    "repeated string": "{% set s = 'x' * 900000 %}{{ s ~ s ~ s }}",
}


@pytest.mark.parametrize("name", sorted(RUNAWAY_ON_LINE_4))
def test_a_runaway_template_is_named_with_its_line(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p>\n<p>Une offre.</p>\n\n"
                                             + RUNAWAY_ON_LINE_4[name] + "\n<p>Fin</p>\n")
    result = project.send()
    assert result.exit_code == 2, result.output
    assert "offer.html.j2:4: the template took" in result.output, result.output
    assert project.messages() == []


def test_an_ordinary_loop_is_well_within_the_budget(project: Project) -> None:
    project.write("templates/offer.html.j2", "{% for i in range(200) %}<p>{{ i }} {{ contact.first_name }}</p>"
                                             "{% endfor %}")
    assert project.send().exit_code == 0
    assert len(project.messages()) == 2


FOLDED_OR_IN_ONE_CALL = {
    "constant centred": "<p>{{ 'x'|center(999999999) }}</p>",
    "format width": "<p>{{ '%0999999999d' % 1 }}</p>",
    "format filter": "<p>{{ '%999999999s'|format(contact.first_name) }}</p>",
    "indent": "<p>{{ contact.first_name|indent(999999999) }}</p>",
    "list sum": "<p>{{ ([[0] * 1000] * 3000)|sum(start=[]) }}</p>",
}

# Each makes a value of 2 to 10 million characters or items that the message never shows (so the
# output budget alone would let it through), in one C call, or in steps too few for the timer:
# at 1,000 times that size it would exhaust the machine's memory before any timer rang.
AMPLIFIED_IN_ONE_CALL = {
    "replace method": '{% set s = ("x" * 999999).replace("x", "xx") %}',
    "replace filter": '{% set s = ("x" * 999999)|replace("x", "xx") %}',
    "join method": '{% set s = "ab".join(["x"] * 999999) %}',
    "join filter": '{% set s = (["xy"] * 999999)|join %}',
    "ljust": '{% set s = "x".ljust(2000000) %}',
    "zfill": '{% set s = "1".zfill(2000000) %}',
    "expandtabs": '{% set s = ("\t" * 1000).expandtabs(5000) %}',
    "format width from an argument": '{% set s = "{:{}}".format(1, 2000000) %}',
    "percent width from an argument": '{% set s = "%*d" % (2000000, 1) %}',
    "percent precision": '{% set s = "%.2000000f" % 1.0 %}',
    "format precision": '{% set s = "{:.2000000f}".format(1.0) %}',
    "format widths adding up": '{% set s = ("{0:999999}" * 3).format(1) %}',
    "percent widths adding up": '{% set s = "%999999d%999999d%999999d" % (1, 2, 3) %}',
    "doubling with ~": '{% set ns = namespace(s="x") %}{% for i in range(21) %}{% set ns.s = ns.s ~ ns.s %}'
                       '{% endfor %}',
    "doubling with +": '{% set ns = namespace(s="x") %}{% for i in range(21) %}{% set ns.s = ns.s + ns.s %}'
                       '{% endfor %}',
    "list extended by itself": '{% set s = [0] %}{% for i in range(21) %}{% set _ = s.extend(s) %}{% endfor %}',
    "indent string on every line": '{% set s = ("a\n" * 1000)|indent("x" * 2000) %}',
    "wrap string between lines": '{% set s = ("ab " * 1000)|wordwrap(2, true, "z" * 2000) %}',
    "json indent": '{% set s = [[[[1]]]]|tojson(indent=500000) %}',
}


@pytest.mark.parametrize("name", sorted(AMPLIFIED_IN_ONE_CALL))
def test_a_value_larger_than_the_output_budget_is_refused_before_it_is_made(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p>"
                                             + AMPLIFIED_IN_ONE_CALL[name] + "<p>{{ s|length > 0 }}</p>")
    result = project.send()
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output and "1,000,000 characters of output for one message" in result.output
    assert project.messages() == []


def test_a_template_piling_up_values_stops_at_the_memory_budget(project: Project) -> None:
    """Each value is small and each step quick; within its 2 s the loop could hold gigabytes."""
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p>{% set s = [] %}"
                                             "{% for i in range(100000) %}{% set _ = s.append('x' * 199999 ~ i) %}"
                                             "{% endfor %}<p>{{ s|length }}</p>")
    started = time.monotonic()
    result = project.send()
    assert time.monotonic() - started < 30, "the send hung"
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output and "MB of memory for one message" in result.output
    assert project.messages() == []


@pytest.mark.parametrize("name", sorted(FOLDED_OR_IN_ONE_CALL))
def test_work_no_timer_could_stop_is_refused_before_it_starts(project: Project, name: str) -> None:
    """Constant folding while compiling and single C calls run outside any timer: they are bounded
    by what they are asked to produce."""
    project.write("templates/offer.html.j2", FOLDED_OR_IN_ONE_CALL[name])
    started = time.monotonic()
    result = project.send()
    assert time.monotonic() - started < 30, "the send hung"
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output
    assert project.messages() == []


def test_ordinary_filters_still_work(project: Project) -> None:
    project.write("templates/offer.html.j2", "<p>{{ contact.first_name|center(20) }} {{ '%05d'|format(42) }} "
                                             "{{ [1, 2, 3]|sum }} {{ 'ab'|indent(2) }} {{ ['a', 'b']|join(', ') }} "
                                             "{{ 'a-b'|replace('-', ' et ') }} {{ 'un deux trois'|wordwrap(5) }} "
                                             "{{ {'k': [1]}|tojson(indent=2) }} {{ 'x'.ljust(3, '.') }} "
                                             "{{ '{:>6}'.format('y') }} {{ '%.2f' % 3.14159 }} "
                                             "{{ ' / '.join(['c', 'd']) }} {{ contact.first_name ~ '!' }}</p>")
    result = project.send()
    assert result.exit_code == 0, result.output
    message = project.messages()[0]
    for expected in (b"00042", b"a, b", b"a et b", b"x..", b"3.14", b"c / d"):
        assert expected in message


# Each asks one C call for a gigabyte or more: no timer can look inside it, and no check before the
# call knows the size (a list holding one long string a thousand times is a list of 1,200 items).
ONE_CALL_GIGABYTE = {
    "int.to_bytes": "<p>{{ (1).to_bytes(1200000000, 'big')|length }}</p>",
    "str of a list of one long string": "{% set l = ['x' * 999999] * 1200 %}<p>{{ (l|string)|length }}</p>",
    "tojson of that list": "{% set l = ['x' * 999999] * 1200 %}<p>{{ (l|tojson)|length }}</p>",
    "translate to long strings": "<p>{{ ('x' * 1200).translate({120: 'y' * 999999})|length }}</p>",
    "many fields of a width each within bounds": "<p>{{ ('{0:999999}' * 1200).format(1)|length }}</p>",
    "many named fields with %": "<p>{{ ('%(a)999999s' * 1200) % {'a': 1}|length }}</p>",
}


@pytest.mark.parametrize("name", sorted(ONE_CALL_GIGABYTE))
def test_one_call_asking_for_a_gigabyte_stops_at_the_memory_budget(project: Project, name: str) -> None:
    """`mailer check` in its own process, whose peak memory is its own (the test worker's peak is
    that of every test it ran before)."""
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p>" + ONE_CALL_GIGABYTE[name])
    env = {**os.environ, "MAILER_SECRET": SECRET, "MAILER_CONFIG": ""}
    process = subprocess.Popen([sys.executable, "-m", "mailer", "--config", str(project.config), "check",
                                str(project.campaign), "--no-dns"], cwd=project.root, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode == 2, output
    assert "offer.html.j2" in output
    peak = usage.ru_maxrss * 1024  # Linux: KB
    assert peak < 900 << 20, f"the process grew to {peak >> 20} MB"


# Markup the HTML parser (lexbor, one C call) spends super-linear time or memory on, written by a
# loop or even as it is: under the output budget, and no timer can stop the parser.
COSTLY_MARKUP = {
    # 30,000 nested <div>: 150 KB, lexbor took about 15 s (32,000: 25 s; 100,000: hours)
    "nested thousands deep": "<p>Bonjour {{ contact.first_name }}</p>{% for i in range(30000) %}<div>{% endfor %}x",
    # 20,000 attributes on one tag, each compared by lexbor with those before it: about 9 s
    "attributes on one tag": "<p {% for i in range(20000) %} a{{ i }}{% endfor %}>Bonjour {{ contact.first_name }}</p>",
    # 900 open formatting elements cloned into each of 3,000 paragraphs: 2.7 million elements, 20 KB
    "formatting elements cloned": "<p>Bonjour {{ contact.first_name }}</p><p>"
                                  + "".join(f"<b a={i}>" for i in range(900)) + "<p>x" * 3000,
}


@pytest.mark.parametrize("name", sorted(COSTLY_MARKUP))
def test_markup_the_parser_would_choke_on_is_a_template_error(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", COSTLY_MARKUP[name])
    started = time.monotonic()
    result = project.run("check", str(project.campaign), "--no-dns")
    assert time.monotonic() - started < 5, "the rebuild was not refused before parsing"
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output
    assert "nested" in result.output or "formatting" in result.output or "attributes" in result.output


def test_an_ordinary_long_template_is_not_taken_for_costly_markup(project: Project) -> None:
    rows = "".join(f"<tr><td><font face=Arial><b>{i}</b> <a href='https://acme.example/{i}'>item</a></font></td>"
                   f"<td><p>text<br>more</td></tr>" for i in range(400))
    project.write("templates/offer.html.j2", f"<p>Bonjour {{{{ contact.first_name }}}}</p><table>{rows}</table>")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("where", ["template", "subject"])
def test_expressions_nested_too_deep_to_compile_are_a_template_error(project: Project, where: str) -> None:
    nested = "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}"
    if where == "template":
        project.write("templates/offer.html.j2", f"<p>Bonjour {{{{ contact.first_name }}}} {nested}</p>")
    else:
        text = project.campaign.read_text("utf-8")
        project.campaign.write_text(text.replace('subject = "', f'subject = "{nested} '), "utf-8")
    result = project.run("check", str(project.campaign), "--no-dns")
    assert result.exit_code == 2, result.output
    assert ("offer.html.j2" if where == "template" else "offer.toml") in result.output
    assert "nested too deeply" in result.output


def test_a_long_run_of_dotted_words_beside_an_unsubscribe_word_is_checked_in_linear_time(project: Project) -> None:
    """The text part's search for addresses offering to unsubscribe tried a bare host from every word
    boundary of "a.a.a.…" to its end: 40 KB took 35 s, and the message was refused as too slow."""
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p>"
                                             "<p>To unsubscribe, see below. {{ 'a.' * 20000 }}</p>")
    started = time.monotonic()
    result = project.run("check", str(project.campaign), "--no-dns")
    assert time.monotonic() - started < 10
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("expression", ["(((10 ** 64) ** 64) ** 64) ** 64", "x * x * x",
                                        "('f' * 999999)|int(base=16) // ('e' * 500000)|int(base=16)",
                                        "('f' * 999999)|int(base=16) % ('e' * 500000)|int(base=16)"])
def test_a_number_too_large_to_compute_in_one_step_is_refused(project: Project, expression: str) -> None:
    """Each ** is at most 64, but ((10**64)**64)**64 has 262,144 digits and raising it to 64 was one C
    call of 45 s (multiplying the result by itself, 85 s more): no timer can stop it."""
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p>"
                                             "{% set x = 7 ** 64 %}{% set x = x ** 64 %}{% set x = x ** 3 %}"
                                             f"<p>{{{{ ({expression}) > 0 }}}}</p>")
    started = time.monotonic()
    result = project.run("check", str(project.campaign), "--no-dns")
    assert time.monotonic() - started < 10, "one step of arithmetic ran unstopped"
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output and "bits" in result.output


# A stylesheet's selectors matched by the rebuild (lexbor, one C call per selector, trying every
# path through descendant combinators): once refused when the timer rang after the call (5 s per
# message), then over 60 nested divs a 10-part selector ran for minutes. The rule is now charged
# to the elements its last compound matches, in linear time.
COSTLY_SELECTORS = {
    "descendants under 40 divs": "<style>" + " ".join(f"{t} div div div div div div p{{height:300px}}" for t in
                                                     ("span", "em", "i", "b", "u")) + "</style>"
                                 + "<div>" * 40 + "<p></p>" * 5 + "</div>" * 40,
    "ten parts under 60 divs": "<style>span div div div div div div div div p{height:300px}</style>"
                               + "<div>" * 60 + "<p></p>." * 12 + "</div>" * 60,
    "inside :has()": "<style>p:has(~ span div div div div div div div div i){height:300px}</style>"
                     + "<div>" * 60 + "<p></p>." * 12 + "</div>" * 60,
}


@pytest.mark.parametrize("name", sorted(COSTLY_SELECTORS))
def test_costly_selectors_are_charged_in_linear_time(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", COSTLY_SELECTORS[name] + "<p>Bonjour {{ contact.first_name }}</p>")
    started = time.process_time()  # CPU time: what the budget bounds, whatever else the machine runs
    result = project.run("preview", str(project.campaign), "--out", str(project.root / "out"))
    assert time.process_time() - started < 10, "the rebuild's selector matching ran unstopped"
    assert result.exit_code == 0, result.output
    page = next((project.root / "out").glob("*.html")).read_text("utf-8")
    assert "height:auto !important" in page  # past the blank-space budget, the empty blocks are flattened


def test_deriving_the_text_part_from_a_large_static_template_is_within_the_budget(project: Project) -> None:
    """The text part's template is derived once, before any message, from the HTML template's
    source: a static table of 300 x 300 cells (450 KB) took 22 s there, outside any budget."""
    project.write("templates/offer.html.j2", "<p>Bonjour {{ contact.first_name }}</p><table>"
                                             + ("<tr>" + "<td>x" * 300) * 300 + "</table>")
    started = time.process_time()  # CPU time: what the budget bounds, whatever else the machine runs
    result = project.run("check", str(project.campaign), "--no-dns")
    assert time.process_time() - started < 18, "the text part's derivation ran unstopped"
    assert result.exit_code in (2, 3), result.output
    assert "offer.html.j2" in result.output
