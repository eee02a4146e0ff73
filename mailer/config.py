"""config.toml and campaign TOML files, loaded into typed, validated objects.

Every problem in a file is reported at once, each with the file, the line and
the key, so a marketer fixes them in one pass instead of one per run.
"""
from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .addresses import RoleAddresses
from .errors import ConfigError
from .locales import available


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# --------------------------------------------------------------------------- config.toml

class Organization(_Section):
    name: str = ""
    postal_address: str = ""
    privacy_url: str = ""
    contact_email: str = ""


class Database(_Section):
    url: str = "sqlite:///mailer.db"
    #: the environment variable holding the PostgreSQL password, kept out of the url and the file
    password_env: str = ""
    #: SQLite: how long a write waits for another program's lock before giving up
    busy_timeout_seconds: float = Field(default=30.0, ge=0)
    #: PostgreSQL: how long a run keeps reconnecting (a server restarting) before it stops; 0: never retry
    reconnect_seconds: float = Field(default=30.0, ge=0)


class TransportSettings(_Section):
    type: Literal["maildir", "smtp"] = "maildir"
    path: str = "outbox"


class SmtpSettings(_Section):
    host: str = "localhost"
    port: int = Field(587, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "starttls"
    username: str = ""
    password_env: str = "MAILER_SMTP_PASSWORD"
    max_connections: int = Field(10, ge=1, le=500)
    rate_per_second: float = Field(0, ge=0)
    timeout_seconds: float = Field(30, gt=0)
    bounce_address: str = ""
    ca_file: str = ""                 # a private CA bundle, e.g. for an internal relay
    max_attempts: int = Field(5, ge=1, le=50)
    retry_base_seconds: float = Field(1.0, ge=0)
    #: the relay throttles this long without taking one message: the run stops trying (the rest deferred)
    throttle_patience_seconds: float = Field(120.0, gt=0)


class Processor(_Section):
    name: str = ""
    country: str = ""
    dpa_signed: bool = False
    transfer_mechanism: Literal["", "adequacy", "dpf", "scc"] = ""


class Unsubscribe(_Section):
    base_url: str = "http://localhost:8080"
    allow_local_url: bool = False   # test setups: let smtp runs carry a link recipients cannot reach
    mailto: str = ""
    secret_env: str = "MAILER_SECRET"


class Compliance(_Section):
    retention_years: int = Field(3, ge=1, le=10)
    generic_locals: list[str] = []
    consumer_domains: list[str] = []   # extends mailer's list of consumer mailbox providers

    def role_addresses(self) -> RoleAddresses:
        return RoleAddresses.build(self.generic_locals, self.consumer_domains)


class Dkim(_Section):
    selector: str = ""
    domain: str = ""
    private_key_env: str = "MAILER_DKIM_KEY"


def parse_nameserver(text: str) -> tuple[str, int]:
    """"IP", "IP:PORT" or "[IPv6]:PORT" as (address, port); ValueError says what is wrong."""
    import ipaddress
    address, port = text.strip(), 53
    if address.startswith("["):
        address, _, rest = address[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r}: write [IPv6]:PORT")
            port = int(rest[1:])
    elif address.count(":") == 1:
        address, _, digits = address.partition(":")
        if not digits.isdigit():
            raise ValueError(f"{text!r}: the port must be a number")
        port = int(digits)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (a name server is given by address, "
                         "e.g. \"9.9.9.9\" or \"127.0.0.1:5353\")") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: the port must be between 1 and 65535")
    return address, port


class DnsSettings(_Section):
    """Where `check` and the no-mx rule ask DNS: the system resolver unless nameservers are given."""

    nameservers: list[str] = []
    timeout_seconds: float = Field(3.0, gt=0, le=60)

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_nameserver(text)
        return value


class ConfigModel(_Section):
    organization: Organization = Organization()
    database: Database = Database()
    transport: TransportSettings = TransportSettings()
    smtp: SmtpSettings = SmtpSettings()
    processor: Processor = Processor()
    unsubscribe: Unsubscribe = Unsubscribe()
    compliance: Compliance = Compliance()
    dkim: Dkim = Dkim()
    dns: DnsSettings = DnsSettings()


@dataclass(frozen=True)
class Config:
    """A loaded config.toml. Paths are absolute; `path` is where it came from."""

    path: Path
    organization: Organization
    #: may hold a password: never shown (`mailer.store.redacted` for messages), not in the repr
    database_url: str = field(repr=False)
    transport: TransportSettings
    smtp: SmtpSettings
    processor: Processor
    unsubscribe: Unsubscribe
    compliance: Compliance
    dkim: Dkim
    database_password_env: str = ""
    database_busy_timeout: float = 30.0
    database_reconnect_seconds: float = 30.0
    dns: DnsSettings = field(default_factory=DnsSettings)

    @property
    def outbox(self) -> Path:
        return Path(self.transport.path)


# --------------------------------------------------------------------------- campaign

CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class CampaignSection(_Section):
    id: str
    kind: Literal["prospecting", "newsletter", "members"]
    audiences: list[Literal["b2b", "b2c"]] = Field(min_length=1)
    subject: str = Field(min_length=1)
    from_: str = Field(alias="from", min_length=3)
    reply_to: str = ""
    template: str
    locale: str = "fr"  # one of locales.available(): a file in mailer/locales/
    soft_opt_in: bool = False

    @field_validator("id")
    @classmethod
    def _id_is_a_slug(cls, value: str) -> str:
        if not CAMPAIGN_ID.match(value):
            raise ValueError(
                "must be letters, digits, '.', '_' or '-' (at most 100), e.g. \"2026-12-cloud-audit\""
            )
        return value

    @field_validator("locale")
    @classmethod
    def _locale_has_a_file(cls, value: str) -> str:
        if value not in available():
            raise ValueError(f"must be one of {', '.join(available())} (the locales are the files in mailer/locales/)")
        return value


class Recipients(_Section):
    list: str = Field(min_length=1)
    csv: str = ""
    collected_at: date | None = None   # the collection date of the CSV's rows that give none
    encoding: Literal["utf-8", "utf-16", "utf-16-le", "utf-16-be", "cp1252", "latin-1"] | None = None  # None: detected
    date_format: Literal["DD/MM/YYYY", "MM/DD/YYYY", "YYYY-MM-DD"] = "DD/MM/YYYY"


class Relevance(_Section):
    job_titles: list[str] = []
    industries: list[str] = []


class SendSection(_Section):
    rate_per_second: float = Field(0, ge=0)
    check_mx: bool = False   # the no-mx rule: block recipients whose domain can receive no mail


class CampaignModel(_Section):
    campaign: CampaignSection
    recipients: Recipients
    relevance: Relevance | None = None
    send: SendSection = SendSection()


@dataclass(frozen=True)
class Campaign:
    """A loaded campaign file. Template and CSV paths are absolute."""

    path: Path
    id: str
    kind: str
    audiences: tuple[str, ...]
    subject: str
    from_: str
    reply_to: str
    locale: str
    soft_opt_in: bool
    list_name: str
    csv: Path | None
    html_template: Path | None
    text_template: Path | None
    relevance: Relevance | None
    rate_per_second: float
    collected_at: date | None = None   # the collection date of the CSV's rows that give none
    check_mx: bool = False
    csv_encoding: str | None = None    # None: detected
    csv_date_format: str = "DD/MM/YYYY"


# --------------------------------------------------------------------------- loading

def find_config_path(explicit: str | os.PathLike[str] | None, environ: dict[str, str],
                     beside: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $MAILER_CONFIG, else ./config.toml, else the config.toml nearest the
    campaign file `beside` (its folder, then each parent): `mailer send demo/campaigns/x.toml`
    from outside the project finds demo/config.toml."""
    if explicit:
        return Path(explicit)
    if environ.get("MAILER_CONFIG"):
        return Path(environ["MAILER_CONFIG"])
    here = Path("config.toml")
    if here.is_file() or beside is None or not Path(beside).is_file():
        return here
    for folder in Path(beside).resolve().parents:
        if (folder / "config.toml").is_file():
            return folder / "config.toml"
    return here


def _read_toml(path: Path, what: str, hint: str) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([f"{path}: {what} not found"], hint=hint) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read {what}: {exc}"]) from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: TOML syntax error: {exc}"],
                          hint="check quotes, brackets and '=' on that line") from None


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\- ]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+|\"[^\"]*\")\s*=")


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line number of a key (or of its table when the key is missing)."""
    section: str | None = None
    table_line: int | None = None
    key = str(loc[1]) if len(loc) > 1 else None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            section = header.group(1)
            if section == str(loc[0]):
                table_line = number
            continue
        if section == str(loc[0]) and key is not None:
            match = _KEY.match(line)
            if match and match.group(1).strip('"') == key:
                return number
    return table_line


def _describe(path: Path, text: str, error: dict[str, Any], model: type[BaseModel]) -> str:
    loc = tuple(error["loc"])
    line = _line_of(text, loc) if loc else None
    where = f"{path}:{line}" if line else str(path)
    dotted = f"[{loc[0]}]" + (" " + ".".join(str(p) for p in loc[1:]) if len(loc) > 1 else "")
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f" (did you mean '{close[0]}'?)" if close else (
            f" (known keys: {', '.join(sorted(known))})" if known else "")
        if len(loc) == 1:
            return f"{where}: unknown table [{loc[0]}]{suggestion}"
        return f"{where}: {dotted}: unknown key{suggestion}"
    if kind == "missing":
        if len(loc) == 1:
            return f"{where}: missing table [{loc[0]}]"
        return f"{where}: [{loc[0]}] is missing the required key '{'.'.join(str(p) for p in loc[1:])}'"
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict) and value is not None else ""
    if loc and loc[0] == "database":  # a database url may hold a password: never shown
        shown = ""
    return f"{where}: {dotted}: {error['msg'].removeprefix('Value error, ')}{shown}"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return [f.alias or name for name, f in fields.items()]


def _validate(model: type[BaseModel], path: Path, data: dict[str, Any], text: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(path, text, dict(err), model) for err in exc.errors()]
        raise ConfigError(problems) from None


def _resolve(base: Path, value: str) -> Path:
    candidate = Path(value).expanduser()
    return candidate if candidate.is_absolute() else (base / candidate)


def _sqlite_url_relative_to(base: Path, url: str) -> str:
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return prefix + str((base / url[len(prefix):]).resolve())
    return url


def load_config(path: Path) -> Config:
    """Read and validate config.toml. Raises ConfigError listing every problem."""
    data, text = _read_toml(path, "config file",
                            "pass --config PATH, set MAILER_CONFIG, run from the project's folder, or run `mailer init` to "
                            "create one")
    model: ConfigModel = _validate(ConfigModel, path, data, text)
    _refuse_look_alike_addresses(path, text, [
        (("organization", "contact_email"), model.organization.contact_email),
        (("unsubscribe", "mailto"), model.unsubscribe.mailto),
        (("smtp", "bounce_address"), model.smtp.bounce_address)])
    base = path.resolve().parent
    transport = model.transport.model_copy(update={"path": str(_resolve(base, model.transport.path))})
    smtp = model.smtp
    if smtp.ca_file:
        smtp = smtp.model_copy(update={"ca_file": str(_resolve(base, smtp.ca_file))})
    return Config(
        path=path.resolve(),
        organization=model.organization,
        database_url=_sqlite_url_relative_to(base, model.database.url),
        transport=transport,
        smtp=smtp,
        processor=model.processor,
        unsubscribe=model.unsubscribe,
        compliance=model.compliance,
        dkim=model.dkim,
        database_password_env=model.database.password_env,
        database_busy_timeout=model.database.busy_timeout_seconds,
        database_reconnect_seconds=model.database.reconnect_seconds,
        dns=model.dns,
    )


def _refuse_look_alike_addresses(path: Path, text: str, values: list[tuple[tuple[str, str], str]]) -> None:
    """ConfigError for an address of ours whose domain mixes scripts (addresses.mixed_script_problem).
    Whether each is an address at all is the gate's question (a campaign-level refusal)."""
    from .addresses import mixed_script_problem
    problems = []
    for (section, key), value in values:
        domain = value.strip().rpartition("@")[2].rstrip(">").strip()
        problem = mixed_script_problem(domain) if "@" in value else None
        if problem is not None:
            problems.append(f"{path}:{_line_of(text, (section, key))}: [{section}] {key} {value.strip()!r}: {problem}")
    if problems:
        raise ConfigError(problems)


def database_url_with_password(config: Config, environ: Mapping[str, str]) -> str:
    """[database] url, with the password taken from the variable `password_env` names, if any:
    the password then lives in neither config.toml nor anything mailer prints."""
    variable = config.database_password_env
    if not variable:
        return config.database_url
    password = environ.get(variable)
    if not password:
        raise ConfigError([f"{config.path}: [database] password_env names ${variable}, which is not set"],
                          hint=f"set ${variable} to the database password, or remove password_env "
                               "(libpq's PGPASSWORD and ~/.pgpass also work)")
    from sqlalchemy.engine import make_url
    try:
        url = make_url(config.database_url)
    except Exception:  # noqa: BLE001 - Store.open reports an unreadable url, redacted
        return config.database_url
    return url.set(password=password).render_as_string(hide_password=False)


def load_campaign(path: Path) -> Campaign:
    """Read and validate a campaign file, including that its files exist.

    Template compilation is checked by the renderer (`render.load_templates`),
    which reports problems with the template's own file and line.
    """
    data, text = _read_toml(path, "campaign file", "give the path of a campaign .toml file")
    model: CampaignModel = _validate(CampaignModel, path, data, text)
    base = path.resolve().parent
    problems: list[str] = []

    template_base = _resolve(base, model.campaign.template).resolve()
    if template_base.name.endswith((".html.j2", ".txt.j2")):
        template_base = template_base.with_name(template_base.name.rsplit(".", 2)[0])
    html = template_base.with_name(template_base.name + ".html.j2")
    txt = template_base.with_name(template_base.name + ".txt.j2")
    html_path = html if html.is_file() else None
    txt_path = txt if txt.is_file() else None
    if html_path is None and txt_path is None:
        line = _line_of(text, ("campaign", "template"))
        problems.append(
            f"{path}:{line}: [campaign] template: neither {html} nor {txt} exists "
            "(give the path without the .html.j2/.txt.j2 ending)"
        )

    csv_path: Path | None = None
    if model.recipients.csv:
        csv_path = _resolve(base, model.recipients.csv).resolve()
        if not csv_path.is_file():
            line = _line_of(text, ("recipients", "csv"))
            problems.append(f"{path}:{line}: [recipients] csv: {csv_path} does not exist")

    from .addresses import parse_from_header
    try:
        parse_from_header(model.campaign.from_)
    except ValueError as exc:
        line = _line_of(text, ("campaign", "from"))
        problems.append(f"{path}:{line}: [campaign] from: {exc}")

    if model.campaign.reply_to:
        try:
            parse_from_header(model.campaign.reply_to)
        except ValueError as exc:
            line = _line_of(text, ("campaign", "reply_to"))
            problems.append(f"{path}:{line}: [campaign] reply_to: {exc}")

    if problems:
        raise ConfigError(problems)

    return Campaign(
        path=path.resolve(),
        id=model.campaign.id,
        kind=model.campaign.kind,
        audiences=tuple(dict.fromkeys(model.campaign.audiences)),
        subject=model.campaign.subject,
        from_=model.campaign.from_,
        reply_to=model.campaign.reply_to,
        locale=model.campaign.locale,
        soft_opt_in=model.campaign.soft_opt_in,
        list_name=model.recipients.list,
        csv=csv_path,
        collected_at=model.recipients.collected_at,
        html_template=html_path,
        text_template=txt_path,
        relevance=model.relevance,
        rate_per_second=model.send.rate_per_second,
        check_mx=model.send.check_mx,
        csv_encoding=model.recipients.encoding,
        csv_date_format=model.recipients.date_format,
    )
