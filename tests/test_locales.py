"""One file per locale (mailer/locales/*.toml): same keys everywhere, and every locale works end to end."""
from __future__ import annotations

import email
import re
import shutil
import string
import tomllib
from email import policy
from importlib import resources
from pathlib import Path

import httpx
import pytest
from conftest import SECRET, Project
from web_server import UnsubscribeServer

from mailer import open_workspace
from mailer.addresses import address_hash
from mailer.config import load_campaign
from mailer.errors import ConfigError
from mailer.locales import LocaleFileError, available, load, strings
from mailer.tokens import Keys, sign, verify

FOLDER = resources.files("mailer.locales")
FILES = sorted(f.name for f in FOLDER.iterdir() if f.name.endswith(".toml"))


def flatten(table: dict, prefix: str = "") -> dict[str, object]:
    """Every key of a TOML document as a dotted path ("explain.rules.footer-missing") -> value."""
    found: dict[str, object] = {}
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            found.update(flatten(value, path))
        else:
            found[path] = value
    return found


def placeholders(text: object) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(str(text)) if name is not None}


# --------------------------------------------------------------------------- the files


def test_every_locale_file_has_exactly_the_keys_of_every_other() -> None:
    keys = {name: flatten(tomllib.loads(FOLDER.joinpath(name).read_text("utf-8"))) for name in FILES}
    every = set().union(*keys.values())
    lacking = [f"{name} lacks {path} (it is in {', '.join(n for n in FILES if path in keys[n])})"
               for name in FILES for path in sorted(every - set(keys[name]))]
    assert not lacking, "\n".join(lacking)
    differing = [f"{path}: " + "; ".join(f"{n} uses {sorted(placeholders(keys[n][path]))}" for n in FILES)
                 for path in sorted(every) if len({frozenset(placeholders(keys[n][path])) for n in FILES}) > 1]
    assert not differing, "\n".join(differing)
    assert all(isinstance(value, str) for name in FILES for value in keys[name].values())


def test_the_locales_are_the_files_of_the_folder() -> None:
    assert len(FILES) >= 2
    assert available() == tuple(name.removesuffix(".toml") for name in FILES)
    for code in available():
        assert strings(code).code == code and strings(code).file == f"{code}.toml"
    with pytest.raises(KeyError, match="no locale 'xx'"):
        strings("xx")


def copy_of_the_files(tmp_path: Path) -> Path:
    folder = tmp_path / "locales"
    folder.mkdir()
    for name in FILES:
        (folder / name).write_text(FOLDER.joinpath(name).read_text("utf-8"), "utf-8")
    return folder


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text("utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), "utf-8")


def test_adding_a_language_is_adding_one_file(tmp_path: Path) -> None:
    folder = copy_of_the_files(tmp_path)
    shutil.copy(folder / "en.toml", folder / "de.toml")
    edit(folder / "de.toml", 'closing = "Kind regards,"', 'closing = "Mit freundlichen Grüßen,"')
    loaded = load(folder)
    assert list(loaded) == sorted([*available(), "de"])
    assert loaded["de"].explain.closing == "Mit freundlichen Grüßen,"


@pytest.mark.parametrize("file, old, new, expected", [
    ("fr.toml", 'sender = "Ce message vous est envoyé par"\n', "",
     "fr.toml: [footer] lacks the key 'sender'"),
    ("fr.toml", 'footer-missing = "message non conforme"\n', "",
     "fr.toml: [explain.rules] lacks the key 'footer-missing' (en.toml has it)"),
    ("en.toml", 'closing = "Kind regards,"', 'closing = "Kind regards,"\nclosng = "Bye"',
     "en.toml: [explain] has an unknown key 'closng' (did you mean 'closing'?)"),
    ("en.toml", "[explain]\n", "[explian]\n",
     "en.toml: has an unknown table [explian] (did you mean [explain]?)"),
    ("en.toml", 'title = "Unsubscribe"', "title = 3",
     "en.toml: [unsubscribe_page] title: must be a string, not int"),
    ("fr.toml", "Origine de votre adresse : {source}.", "Origine de votre adresse : {sourc}.",
     "[footer] collected: the files use different placeholders (en.toml: {source}; fr.toml: {sourc})"),
])
def test_a_file_lacking_a_key_or_with_an_unknown_one_fails_naming_the_file_and_the_key(
        tmp_path: Path, file: str, old: str, new: str, expected: str) -> None:
    folder = copy_of_the_files(tmp_path)
    edit(folder / file, old, new)
    with pytest.raises(LocaleFileError) as caught:
        load(folder)
    assert expected in str(caught.value)


def test_a_file_name_that_is_not_a_locale_code_is_refused(tmp_path: Path) -> None:
    folder = copy_of_the_files(tmp_path)
    shutil.copy(folder / "en.toml", folder / "en.backup.toml")
    with pytest.raises(LocaleFileError, match=r"en\.backup\.toml: 'en\.backup' is not a locale code"):
        load(folder)


def test_a_campaign_in_a_locale_without_a_file_is_refused_naming_the_file_and_the_locales(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace('locale = "fr"', 'locale = "de"'))
    with pytest.raises(ConfigError) as caught:
        load_campaign(project.campaign)
    message = str(caught.value)
    assert f"{project.campaign}:" in message and "[campaign] locale" in message and "'de'" in message
    assert f"must be one of {', '.join(available())}" in message


def test_a_token_is_only_signed_for_a_locale_with_a_file() -> None:
    keys = Keys.derive(b"a secret")
    with pytest.raises(ValueError, match="no locale 'xx'"):
        sign(keys, "c", "xx", "00" * 32)


# --------------------------------------------------------------------------- every locale, end to end


@pytest.mark.parametrize("locale", available())
def test_every_locale_works_from_footer_to_unsubscribe_page_to_explain(project: Project, locale: str) -> None:
    words = strings(locale)
    keys = Keys.derive(SECRET.encode())
    digest = address_hash(keys.address, "claire@client.example")
    assert verify(keys, sign(keys, "2026-12-cloud-audit", locale, digest)).locale == locale

    # the footer, in a message sent by a campaign in this locale
    project.campaign.write_text(project.campaign.read_text().replace('locale = "fr"', f'locale = "{locale}"'))
    assert project.send().exit_code == 0
    message = next(m for m in (email.message_from_bytes(raw, policy=policy.default) for raw in project.messages())
                   if m["To"].addresses[0].addr_spec == "claire@client.example")
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    footer = words.footer
    for sentence in (footer.sender, footer.object, footer.unsubscribe_text, footer.privacy, footer.requests,
                     footer.collected.format(source="Salon VivaTech 2026")):
        assert sentence in text
    assert f'lang="{locale}"' in html and f">{footer.unsubscribe}</a>" in html

    # the unsubscribe page, from the message's own link, served by the real app
    url = re.search(r"<(https://[^>]+)>", message["List-Unsubscribe"]).group(1)
    token = url.rsplit("/", 1)[1]
    workspace = open_workspace(project.config, {"MAILER_SECRET": SECRET})
    try:
        assert verify(workspace.keys, token).locale == locale
        with UnsubscribeServer(workspace) as server:
            page = httpx.get(f"{server.url}/u/{token}")
    finally:
        workspace.close()
    page_words = words.unsubscribe_page
    assert page.status_code == 200
    assert f'<html lang="{locale}">' in page.text
    assert f"<h1>{page_words.title}</h1>" in page.text and f">{page_words.button}</button>" in page.text

    # the answer to the person's access request
    result = project.run("explain", "claire@client.example", "--locale", locale)
    assert result.exit_code == 0, result.output
    answer = words.explain
    assert result.output.startswith(answer.greeting + "\n")
    assert f"- {answer.fields['first_name']}{answer.label_separator}Claire\n" in result.output
    assert answer.rights in result.output and answer.closing in result.output
