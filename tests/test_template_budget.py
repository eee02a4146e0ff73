"""A template's work per message is bounded: a runaway loop stops the run before anything is sent."""
from __future__ import annotations

import time

import pytest
from conftest import Project

RUNAWAY = {
    "nested ranges": "<p>Hi {{ contact.first_name }}</p>{% for i in range(100000) %}{% for j in range(100000) %}"
                     "{% endfor %}{% endfor %}",
    "repeated string": "<p>{{ 'x' * 100000000 }}</p>",
    "output flood": "{% for i in range(100000) %}<p>{{ contact.first_name * 20 }}</p>{% endfor %}",
    "huge exponent": "<p>{{ 9 ** 999999 }}</p>",
    # Not the template's code but its markup: a stylesheet whose descendant selectors cost the
    # rebuild's selector matching exponential time (the timer's exception was once swallowed there).
    "costly selectors": "<style>" + " ".join(f"{t} div div div div div div p{{height:300px}}" for t in
                                             ("span", "em", "i", "b", "u")) + "</style>"
                        + "<div>" * 40 + "<p></p>" * 5 + "</div>" * 40 + "<p>Bonjour {{ contact.first_name }}</p>",
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
                                             "{{ [1, 2, 3]|sum }} {{ 'ab'|indent(2) }}</p>")
    assert project.send().exit_code == 0
    assert b"00042" in project.messages()[0]
