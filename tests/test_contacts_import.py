"""`mailer contacts import`: all or nothing, FILE:LINE errors, upsert on the normalised address."""
from __future__ import annotations

from conftest import Project


def imp(project: Project, text: str | bytes, *args: str, name: str = "in.csv"):
    path = project.root / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return project.run("contacts", "import", str(path), "--list", "l1", *args), path


def test_comma_semicolon_and_bom_are_all_accepted(project: Project) -> None:
    result, _ = imp(project, "email,kind,source\na@x.example,b2b,Salon\n")
    assert result.exit_code == 0 and "1 new" in result.output
    result, _ = imp(project, "email;kind;source\nb@x.example;b2c;Site\n")
    assert result.exit_code == 0 and "1 new" in result.output
    result, _ = imp(project, "\ufeffemail,kind\nc@x.example,b2b\n".encode("utf-8"))
    assert result.exit_code == 0 and "1 new" in result.output
    assert project.sql("select email_key, kind from contacts order by id") == [
        ("a@x.example", "b2b"), ("b@x.example", "b2c"), ("c@x.example", "b2b")]
    assert project.sql("select count(*) from list_members") == [(3,)]


def test_a_bad_row_imports_nothing_and_names_file_and_line(project: Project) -> None:
    text = ("email,kind,collected_at,consent\n"
            "ok@x.example,b2b,2026-01-01,\n"
            "bad@x.example,b2z,2026-01-01,\n"
            "date@x.example,b2b,32/13/2026,\n"
            "consent@x.example,b2c,2026-01-01,maybe\n")
    result, path = imp(project, text)
    assert result.exit_code == 2
    assert f"{path}:3: kind 'b2z' must be 'b2b' or 'b2c'" in result.output
    assert f"{path}:4: collected_at '32/13/2026' is not a date (use YYYY-MM-DD, or DD/MM/YYYY" in result.output
    assert f"{path}:5: consent 'maybe'" in result.output
    assert "--skip-invalid" in result.output
    assert project.sql("select count(*) from contacts") == [(0,)]


def test_skip_invalid_imports_the_good_rows_and_lists_the_others(project: Project) -> None:
    result, path = imp(project, "email,kind\nok@x.example,b2b\nbad@x.example,zzz\n", "--skip-invalid")
    assert result.exit_code == 0
    assert "1 new" in result.output and f"{path}:3:" in result.output
    assert project.sql("select email_key from contacts") == [("ok@x.example",)]


def test_missing_columns_and_encoding_problems(project: Project) -> None:
    result, path = imp(project, "mail,kind\na@x.example,b2b\n")
    assert result.exit_code == 2 and f"{path}:1: no 'email' column" in result.output
    result, path = imp(project, "email,kind\nb@x.example,b2b\n\xe9t\xe9@x.example,b2b\n".encode("latin-1"),
                       "--encoding", "utf-8")
    assert result.exit_code == 2 and f"{path}:3: not UTF-8" in result.output and "--encoding" in result.output
    result, path = imp(project, "email,kind\n\"a@x.example,b2b\n")
    assert result.exit_code == 2
    result, path = imp(project, "email,kind\na@x.example,b2b,extra\n")
    assert result.exit_code == 2 and f"{path}:2: 3 fields, but the header has 2" in result.output
    result = project.run("contacts", "import", str(project.root / "nope.csv"), "--list", "l1")
    assert result.exit_code == 2 and "file not found" in result.output


def test_invalid_address_syntax_is_imported_for_the_gate_to_block(project: Project) -> None:
    result, _ = imp(project, "email,kind\nnot-an-address,b2b\n")
    assert result.exit_code == 0
    assert project.sql("select email, email_valid from contacts") == [("not-an-address", 0)]


def test_upsert_on_normalised_address_keeps_collected_at_and_merges_attributes(project: Project) -> None:
    imp(project, "email,kind,job_title,collected_at,segment\nJean.Dupont@Client.EXAMPLE,b2b,CTO,2025-01-01,big\n")
    result, _ = imp(project, "email,kind,job_title,tier\njean.dupont@client.example,b2b,CEO,gold\n")
    assert "0 new, 1 updated" in result.output
    rows = project.sql("select email_key, job_title, collected_at, attrs from contacts")
    assert len(rows) == 1
    key, title, collected, attrs = rows[0]
    assert key == "jean.dupont@client.example" and title == "CEO" and collected == "2025-01-01"
    assert '"segment": "big"' in attrs and '"tier": "gold"' in attrs


def test_columns_absent_from_the_file_keep_their_stored_values(project: Project) -> None:
    imp(project, "email,kind,source,consent\nj@x.example,b2c,Site,opt-in\n")
    imp(project, "email,kind,first_name\nj@x.example,b2c,Jo\n")
    assert project.sql("select first_name, source, consent from contacts") == [("Jo", "Site", "opt-in")]


def test_dates_in_the_future_are_refused(project: Project) -> None:
    result, path = imp(project, "email,kind,consent_at\nj@x.example,b2c,2999-01-01\n")
    assert result.exit_code == 2 and f"{path}:2: consent_at '2999-01-01' is in the future" in result.output


def test_ten_thousand_rows_import(project: Project) -> None:
    rows = "".join(f"p{i}@c{i % 50}.example,b2b,Salon\n" for i in range(10_000))
    result, _ = imp(project, "email,kind,source\n" + rows)
    assert result.exit_code == 0 and "10000 new" in result.output
    assert project.sql("select count(*) from list_members") == [(10_000,)]


def test_empty_or_older_dates_never_erase_a_recorded_contact_from_the_person(project: Project) -> None:
    imp(project, "email,kind,last_interaction_at,consent_at\nj@x.example,b2c,2026-03-01,2026-01-01\n")
    imp(project, "email,kind,last_interaction_at,consent_at\nj@x.example,b2c,,\n")
    assert project.sql("select last_interaction_at, consent_at from contacts") == [("2026-03-01", "2026-01-01")]
    imp(project, "email,kind,last_interaction_at\nj@x.example,b2c,2025-01-01\n")
    assert project.sql("select last_interaction_at from contacts") == [("2026-03-01",)]


def test_a_file_that_cannot_be_read_keeps_its_own_hint(project: Project) -> None:
    """Only bad rows suggest skipping them; a file in the wrong encoding says how to save it."""
    result, path = imp(project, "email,kind\nzo\xe9@x.example,b2b\n".encode("latin-1"), "--encoding", "utf-8")
    assert result.exit_code == 2
    assert f"{path}:2: not UTF-8" in result.output
    assert "save the file as UTF-8" in result.output
    assert "--skip-invalid" not in result.output


GOOD = "email,first_name,kind\nfirst@x.example,Ann,b2b\n"
AFTER = "after@x.example,Bob,b2b\n"


def _cases() -> dict[str, tuple[bytes, int, str]]:
    """name -> (file, line of the bad row, what is said of it)."""
    return {
        "cut inside a quoted value": ((GOOD + 'cut@x.example,"Zo\u00e9,b2b\n' + AFTER).encode(), 3,
                                      "a quoted value starts on this line and is never closed"),
        "a 1 MB value": ((GOOD + "big@x.example," + "x" * 1_000_000 + ",b2b\n" + AFTER).encode(), 3,
                         "a value longer than 131,072 characters"),
        "a NUL in an address": ((GOOD + "n\x00ul@x.example,Nul,b2b\n" + AFTER).encode(), 3,
                                "a NUL character in email"),
        "a NUL in a name": ((GOOD + "name@x.example,N\x00ame,b2b\n" + AFTER).encode(), 3,
                            "a NUL character in first_name"),
        "a stray quote": ((GOOD + 'quote@x.example,"Ann" Lee,b2b\n' + AFTER).encode(), 3,
                          "a quote inside a quoted value must be doubled"),
    }


def test_rows_csv_cannot_read_are_named_and_skippable_and_the_rows_around_them_kept(project: Project) -> None:
    for name, (data, line, said) in _cases().items():
        result, path = imp(project, data)
        assert result.exit_code == 2, f"{name}: {result.output}"
        assert f"{path}:{line}: {said}" in result.output, f"{name}: {result.output}"
        assert "Traceback" not in result.output and "field limit" not in result.output
        assert project.sql("select count(*) from contacts") == [(0,)], name  # all or nothing

        skipped, _ = imp(project, data, "--skip-invalid")
        assert skipped.exit_code == 0, f"{name}: {skipped.output}"
        assert f"{path}:{line}: {said}" in skipped.output
        assert sorted(project.sql("select email_key from contacts")) == [("after@x.example",), ("first@x.example",)], \
            f"{name}: the good rows before and after the bad one, and nothing of it"
        project.sql("delete from list_members")
        project.sql("delete from contacts")


def test_a_file_with_old_mac_line_endings_imports(project: Project) -> None:
    result, _ = imp(project, (GOOD + AFTER).replace("\n", "\r").encode())
    assert result.exit_code == 0, result.output
    assert sorted(project.sql("select email_key, first_name from contacts")) == [
        ("after@x.example", "Bob"), ("first@x.example", "Ann")]


def test_what_excel_in_france_writes_is_read_and_said(project: Project) -> None:
    """Windows-1252 with semicolons, UTF-16 with tabs (Excel's "Unicode text"), DD/MM/YYYY dates."""
    rows = "email;first_name;company;kind;source;collected_at\r\n" \
           "zoe@x.example;Zoé;Cœur & Cie;b2b;Salon 2026 (entrée 15 €);12/06/2026\r\n"
    result, _ = imp(project, rows.encode("cp1252"))
    assert result.exit_code == 0, result.output
    assert "(read as Windows-1252): 1 new" in result.output
    tabs = "email\tfirst_name\tkind\tsource\tcollected_at\r\nlea@x.example\tLéa\tb2c\tSite\t01/03/2026\r\n"
    result, _ = imp(project, tabs.encode("utf-16"), name="unicode.txt")
    assert result.exit_code == 0, result.output
    assert "(read as UTF-16): 1 new" in result.output
    assert project.sql("select email_key, first_name, company, source, collected_at from contacts order by id") == [
        ("zoe@x.example", "Zoé", "Cœur & Cie", "Salon 2026 (entrée 15 €)", "2026-06-12"),
        ("lea@x.example", "Léa", "", "Site", "2026-03-01")]


def test_utf_16_without_its_byte_order_mark_is_read(project: Project) -> None:
    text = "email\tfirst_name\tkind\r\nlea@x.example\tLéa\tb2c\r\n"
    for codec in ("utf-16-le", "utf-16-be"):
        result, _ = imp(project, text.encode(codec), name=f"{codec}.txt")
        assert result.exit_code == 0, result.output
        assert "(read as UTF-16 (" in result.output
    assert project.sql("select email_key, first_name from contacts") == [("lea@x.example", "Léa")]


def test_month_first_dates_when_the_file_says_so(project: Project) -> None:
    result, _ = imp(project, "email,kind,collected_at\na@x.example,b2b,03/04/2026\n", "--date-format", "MM/DD/YYYY")
    assert result.exit_code == 0, result.output
    assert project.sql("select collected_at from contacts") == [("2026-03-04",)]


def test_a_file_imported_again_is_unchanged(project: Project) -> None:
    text = "email,kind,first_name\na@x.example,b2b,Ana\nb@x.example,b2b,Bo\n"
    assert "2 new, 0 updated, 0 unchanged" in imp(project, text)[0].output
    assert "0 new, 0 updated, 2 unchanged" in imp(project, text)[0].output
    assert "0 new, 1 updated, 1 unchanged" in imp(project, text.replace("Bo", "Bob"))[0].output


def test_a_campaign_says_how_its_csv_is_written(project: Project) -> None:
    project.campaign.write_text(project.campaign.read_text().replace(
        '[recipients]\n', '[recipients]\nencoding = "cp1252"\ndate_format = "MM/DD/YYYY"\n'))
    project.csv.write_bytes(("email,first_name,last_name,company,job_title,industry,kind,source,collected_at\n"
                             "claire@client.example,Zoé,Durand,Client SA,CTO,banking,b2b,Salon,06/12/2026\n")
                            .encode("cp1252"))
    result = project.send()
    assert result.exit_code == 0, result.output
    assert "(read as Windows-1252)" in result.output
    assert project.sql("select first_name, collected_at from contacts") == [("Zoé", "2026-06-12")]
