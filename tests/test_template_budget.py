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
}


@pytest.mark.parametrize("name", sorted(RUNAWAY))
def test_a_runaway_template_stops_the_send_naming_the_file(project: Project, name: str) -> None:
    project.write("templates/offer.html.j2", RUNAWAY[name])
    started = time.monotonic()
    result = project.send()
    assert time.monotonic() - started < 30, "the send hung"
    assert result.exit_code == 2, result.output
    assert "offer.html.j2" in result.output and "for one message" in result.output
    assert project.messages() == []


def test_an_ordinary_loop_is_well_within_the_budget(project: Project) -> None:
    project.write("templates/offer.html.j2", "{% for i in range(200) %}<p>{{ i }} {{ contact.first_name }}</p>"
                                             "{% endfor %}")
    assert project.send().exit_code == 0
    assert len(project.messages()) == 2
