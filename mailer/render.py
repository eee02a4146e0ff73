"""Rendering: sandboxed Jinja templates, the compliance footer, MIME messages.

Templates run in Jinja's sandbox with StrictUndefined: a misspelt variable is an
error naming the template's file and line, never a blank. Contact values are
HTML-escaped in the HTML part and stripped of control characters before they go
near a header. The footer is appended after the template's body in both parts,
in the campaign's locale, and `check_footer` verifies that a reader would see it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
import signal
import string
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

try:
    import resource
except ImportError:  # not on Windows: no cap, the timer alone
    resource = None  # type: ignore[assignment]

import inscriptis
import jinja2
from inscriptis.model.config import ParserConfig
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import escape
from selectolax.lexbor import SelectolaxError

from .addresses import mailbox_hash, parse_from_header
from .config import Campaign, Config
from .contacts import ContactData
from .dkim_signing import DkimSigner
from .errors import TemplateError
from .isolation import (
    URL_MARK,
    Isolated,
    Reuse,
    TooCostly,
    check_footer_text,
    check_parse_cost,
    collapse_blank_lines,
    isolate,
    size_problem,
    text_problems,
    value_mark,
)
from .locales import fill, strings, typeset
from .mime import CRLF, Fixed, build_message, encode_words, mailbox
from .tokens import Keys, sign

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_TEXT_CONFIG = ParserConfig(display_links=True)
_SENTENCE, _URL = "\ue000source\ue001", "\ue000unsubscribe\ue001"


#: A display name (To, From, Reply-To) longer than this is cut, with "…": only the name in the header.
NAME_LIMIT = 200
#: A rendered subject longer than this is a template error (RFC 5322's line length, though it is folded).
SUBJECT_LIMIT = 998


def one_line(value: str) -> str:
    """Collapse control characters (CR, LF, NUL, C1, …) so a value cannot start a new header."""
    return " ".join(_CONTROL.sub(" ", value).split())


def display_name(value: str) -> str:
    """A name for a To, From or Reply-To header: one line, at most NAME_LIMIT characters.

    A 5,000-character first name made a 10,000-character To line that servers refused;
    a name that long is junk, and what the template shows of it is not cut.
    """
    value = one_line(value)
    return value if len(value) <= NAME_LIMIT else value[:NAME_LIMIT - 1].rstrip() + "…"


@dataclass(frozen=True)
class Templates:
    subject: jinja2.Template
    html: jinja2.Template | None
    text: jinja2.Template | None
    html_path: Path | None
    text_path: Path | None
    #: the text part's template, derived once from the HTML template (None: derive per message)
    text_from_html: jinja2.Template | None = None


_OPENERS = {"variable_begin": "variable_end", "block_begin": "block_end", "comment_begin": "comment_end"}
_UNSAFE_TO_DERIVE = frozenset({"include", "extends", "import", "from", "macro", "call", "filter", "safe", "raw"})


def derive_text_template(env: SandboxedEnvironment, source: str) -> str | None:
    """The text part's template, made once from the HTML template's source.

    Converting every rendered message from HTML to text was the costliest step
    of rendering. Instead, each Jinja construct of the HTML template is replaced
    by a placeholder, the HTML is converted to text once (inscriptis), and the
    constructs are put back: rendering that text template per recipient gives the
    same text as converting each message. Returns None (convert per message)
    when the template does things this cannot follow: includes, macros, `safe`
    output, or a block tag in a place the conversion drops (an attribute, <title>).
    """
    try:
        tokens = list(env.lex(source))
    except jinja2.TemplateSyntaxError:
        return None
    joined = "".join(value for _, _, value in tokens)
    if joined != source and source.removesuffix("\n").removesuffix("\r") != joined:
        return None  # the lexer lost something: do not guess
    constructs: list[tuple[str, str]] = []  # (kind, source text)
    html: list[str] = []
    current: list[str] | None = None
    kind = ""
    for _, token, value in tokens:
        if token in _OPENERS and current is None:
            current, kind = [value], token
            continue
        if current is not None:
            current.append(value)
            if token == "name" and value in _UNSAFE_TO_DERIVE:
                return None
            if token == _OPENERS[kind]:
                if kind != "comment_begin":
                    html.append(f"\ue000{len(constructs)}\ue001")
                    constructs.append((kind, "".join(current)))
                current = None
            continue
        if token != "data":
            return None  # line statements or anything else unexpected
        html.append(value)
    if current is not None:
        return None
    text = inscriptis.get_text("".join(html), _TEXT_CONFIG)
    for index, (kind, construct) in enumerate(constructs):
        marker = f"\ue000{index}\ue001"
        count = text.count(marker)
        if kind == "block_begin" and count != 1:
            return None
        text = text.replace(marker, construct)
    if "\ue000" in text or "\ue001" in text:
        return None
    return text.strip("\n") + "\n"


class View(SimpleNamespace):
    """What templates see of a contact, the organization or the campaign: plain data only."""


_TOP_LEVEL = ("contact", "campaign", "organization", "unsubscribe_url")


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined whose error names the variable as the template wrote it and the closest
    names that exist (`contact.firstname` -> did you mean contact.first_name?)."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:  # the sandbox's own messages (unsafe attribute, …)
            return str(self._undefined_hint)
        name, owner = self._undefined_name, self._undefined_obj
        if owner is jinja2.utils.missing:
            fields = [f"contact.{field}" for field in _CONTACT_FIELDS]
            return _unknown(f"{name}", list(_TOP_LEVEL), list(_TOP_LEVEL) + fields)
        if isinstance(owner, View):
            fields = [k for k in vars(owner) if not k.startswith("_")]
            what = "contact" if "first_name" in fields else "organization" if "postal_address" in fields else "campaign"
            names = [f"{what}.{field}" for field in fields]
            return _unknown(f"{what}.{name}", names, names)
        if isinstance(owner, dict) and isinstance(name, str):
            names = [f"contact.attrs.{key}" for key in owner]
            message = _unknown(f"contact.attrs.{name}", [], names)
            return message + (f" (the CSV's extra columns: {', '.join(map(str, owner))})" if 0 < len(owner) < 30
                              else " (the CSV has no extra columns)" if not owner else "")
        return str(super()._undefined_message)


_CONTACT_FIELDS = ("email", "first_name", "last_name", "company", "job_title", "industry", "country", "kind",
                   "source", "member", "attrs")


def _unknown(written: str, listed: list[str], candidates: list[str]) -> str:
    """`written` is not defined; the closest of `candidates` (compared by their last part), and
    the `listed` names."""
    import difflib
    leaves = {c.rsplit(".", 1)[-1].lower(): c for c in candidates}
    close = difflib.get_close_matches(written.rsplit(".", 1)[-1].lower(), list(leaves), n=1, cutoff=0.6)
    message = f"{written} is not defined"
    if close:
        message += f": did you mean {leaves[close[0]]}?"
    if listed:
        message += f" (known: {', '.join(listed)})"
    return message


class _BoundedConcat(CodeGenerator):
    """Jinja's code generator, with `a ~ b` checked against the output budget once joined (each
    piece is already bounded, so a doubling loop stops at the first value past the budget)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded((")
        super().visit_Concat(node, frame)
        self.write("))")


def _too_large() -> BudgetExceeded:
    return BudgetExceeded(f"more than {OUTPUT_LIMIT:,} characters of output")


#: The largest whole number a template may compute, in bits (about 20,000 digits; Python will not
#: even print one over 4,300): one multiplication of numbers far larger (x ** 64 with x of 262,144
#: digits took 45 s in one C call, where no timer can stop it) is refused before it is made.
INTEGER_BITS = 1 << 16


def _too_large_number() -> BudgetExceeded:
    return BudgetExceeded(f"a number over {INTEGER_BITS:,} bits")


def _check_size(size: int) -> None:
    if size > OUTPUT_LIMIT:
        raise _too_large()


_TEXT = (str, bytes, bytearray)


class Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with a direct path for the data of a View, and the output budget applied
    before every C call that could make a value of any size in one go.

    The sandbox checks every attribute it reads; a View's public attributes are
    plain values (strings, booleans, a dict of strings), so reading them needs no
    check. Everything else, a View's "_" names included, goes through the sandbox.

    A timer stops a template between two steps (see _time_budget), not inside one C call:
    "x" * 10**9, "%0999999999d", s.replace("x", s), sep.join(many), "{:{}}".format(1, 10**9) or
    an indent of a long string on every line would exhaust memory before it rings. Those are
    refused when what they would make is larger than OUTPUT_LIMIT.
    """

    intercepted_binops = frozenset({"*", "**", "%", "+", "//"})
    code_generator_class = _BoundedConcat

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No constant folding: it would evaluate {{ 'x'|center(10**9) }} while compiling, outside
        # any budget.
        super().__init__(*args, optimized=False, **kwargs)
        for name in ("center", "truncate"):
            self.filters[name] = _bounded_width(self.filters[name])
        self.filters["indent"] = _bounded_indent(self.filters["indent"])
        self.filters["wordwrap"] = _bounded_wordwrap(self.filters["wordwrap"])
        self.filters["format"] = _bounded_format(self.filters["format"])
        self.filters["replace"] = _bounded_replace_filter(self.filters["replace"])
        self.filters["join"] = _bounded_join_filter(self.filters["join"])
        self.filters["tojson"] = _bounded_tojson(self.filters["tojson"])
        self.filters["sum"] = _bounded_sum

    @staticmethod
    def bounded(value: Any) -> Any:
        """The result of `a ~ b`, if within the output budget."""
        _check_size(len(value))
        return value

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "%" and isinstance(left, str):
            _check_format(left)
        elif operator == "**" and isinstance(right, int) and abs(right) > 64:
            raise BudgetExceeded("an exponent above 64")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int) and \
                left.bit_length() * right > INTEGER_BITS:
            raise _too_large_number()
        elif operator == "*" and isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > INTEGER_BITS:
                raise _too_large_number()
        elif operator in ("//", "%") and isinstance(left, int) and isinstance(right, int):
            # ('f' * 999999)|int(base=16) is a 4-million-bit number made in linear time; dividing it
            # by one half its size took 15 s in one C call
            if max(left.bit_length(), right.bit_length()) > INTEGER_BITS:
                raise _too_large_number()
        elif operator == "*":
            count, sequence = (right, left) if isinstance(right, int) else (left, right)
            if isinstance(count, int) and isinstance(sequence, (*_TEXT, list, tuple)):
                _check_size(len(sequence) * count)
        elif operator == "+" and isinstance(left, (*_TEXT, list, tuple)) and hasattr(right, "__len__"):
            _check_size(len(left) + len(right))
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is View and not attribute.startswith("_"):
            try:
                return obj.__dict__[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, (*_TEXT, list)):
            args = _check_method(owner, getattr(obj, "__name__", ""), args, kwargs)
        return super().call(context, obj, *args, **kwargs)


def _argument(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


def _replaced_size(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    if not (isinstance(text, _TEXT) and isinstance(old, _TEXT) and isinstance(new, _TEXT)):
        return 0
    try:
        found = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
    except TypeError:  # str and bytes mixed: the call itself will say so
        return 0
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return len(text) + found * (len(new) - len(old))


def _joined(separator: Any, items: Any) -> tuple[list[Any], int]:
    """The items, as a list (an iterator is read once, here), and the size of their join."""
    items = list(items)
    size = sum(len(item) for item in items if isinstance(item, _TEXT))
    return items, size + len(separator) * max(0, len(items) - 1)


def _check_method(owner: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Refuse a string or list method whose result would pass the output budget; the arguments
    to call it with (an iterator given to join or extend is read here, so it is passed as a list)."""
    if name == "replace":
        _check_size(_replaced_size(owner, _argument(args, kwargs, 0, "old"), _argument(args, kwargs, 1, "new"),
                                   _argument(args, kwargs, 2, "count", -1)))
    elif name in ("center", "ljust", "rjust", "zfill"):
        width = _argument(args, kwargs, 0, "width", 0)
        if isinstance(width, int):
            _check_size(width)
    elif name == "expandtabs" and isinstance(owner, _TEXT):
        tabsize = _argument(args, kwargs, 0, "tabsize", 8)
        if isinstance(tabsize, int):
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            _check_size(len(owner) + tabs * tabsize)
    elif name == "join" and args:
        items, size = _joined(owner, args[0])
        _check_size(size)
        return (items, *args[1:])
    elif name == "extend" and isinstance(owner, list) and args:
        items = list(args[0])
        _check_size(len(owner) + len(items))
        return (items, *args[1:])
    elif name in ("append", "insert") and isinstance(owner, list):
        _check_size(len(owner) + 1)
    return args


_PERCENT = re.compile(r"%(?:\([^)%]{0,200}\))?[-#0 +]{0,20}(\*|\d+)?(?:\.(\*|\d+))?")
_DIGITS = re.compile(r"\d+")


def _check_format(text: Any) -> None:
    """A format string whose fields would make more than the output budget (their widths and
    precisions added up), or that takes a width or precision from an argument (`%*d`, `{:{}}`),
    which could be anything. Linear in the string's length."""
    if not isinstance(text, str):
        return
    sizes: list[str] = []
    if "%" in text:
        for match in _PERCENT.finditer(text):
            width, precision = match.group(1), match.group(2)
            if "*" in (width, precision):
                raise _too_large()
            sizes += [n for n in (width, precision) if n]
    if "{" in text:
        try:
            fields = list(string.Formatter().parse(text))
        except ValueError:
            fields = []  # not a format string: formatting it fails on its own
        for _, _, spec, _ in fields:
            if spec and "{" in spec:
                raise _too_large()
            sizes += _DIGITS.findall(spec or "")
    if any(len(n) > 7 for n in sizes) or sum(map(int, sizes)) > OUTPUT_LIMIT:
        raise _too_large()


def _keeps_flags(bounded: Any, filter_: Any) -> Any:
    for attribute in ("jinja_pass_arg",):
        if hasattr(filter_, attribute):
            setattr(bounded, attribute, getattr(filter_, attribute))
    return bounded


def _bounded_width(filter_: Any) -> Any:
    def bounded(*args: Any, **kwargs: Any) -> Any:
        widths = [a for a in (*args[1:], *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
        if any(abs(w) > OUTPUT_LIMIT for w in widths):
            raise _too_large()
        return filter_(*args, **kwargs)
    return _keeps_flags(bounded, filter_)


def _bounded_indent(filter_: Any) -> Any:
    """indent(s, width=4, first=False, blank=False): the indent, a number or a string, goes before
    every line."""
    def bounded(s: Any, width: Any = 4, *args: Any, **kwargs: Any) -> Any:
        size = width if isinstance(width, int) else len(width) if isinstance(width, str) else 0
        lines = str(s).count("\n") + 1
        _check_size(len(str(s)) + lines * abs(size))
        return filter_(s, width, *args, **kwargs)
    return _keeps_flags(bounded, filter_)


def _bounded_wordwrap(filter_: Any) -> Any:
    """wordwrap(environment, s, width=79, break_long_words=True, wrapstring=None, ...): the wrap
    string goes between every two lines, at most one line per character."""
    def bounded(environment: Any, s: Any, width: Any = 79, break_long_words: Any = True, wrapstring: Any = None,
                *args: Any, **kwargs: Any) -> Any:
        if isinstance(width, int) and not isinstance(width, bool):
            _check_size(abs(width))
        text = str(s)
        if isinstance(wrapstring, str):
            lines = 2 * len(text) // max(1, width if isinstance(width, int) and width > 0 else 1) + text.count("\n") + 1
            _check_size(len(text) + lines * len(wrapstring))
        return filter_(environment, s, width, break_long_words, wrapstring, *args, **kwargs)
    return _keeps_flags(bounded, filter_)


def _bounded_replace_filter(filter_: Any) -> Any:
    """replace(eval_ctx, s, old, new, count=None)."""
    def bounded(eval_ctx: Any, s: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_size(_replaced_size(str(s), str(old), str(new), -1 if count is None else count))
        return filter_(eval_ctx, s, old, new, count)
    return _keeps_flags(bounded, filter_)


def _bounded_join_filter(filter_: Any) -> Any:
    """join(eval_ctx, value, d="", attribute=None): the items are read once, here."""
    def bounded(eval_ctx: Any, value: Any, d: Any = "", attribute: Any = None) -> Any:
        items = list(value)
        _check_size(sum(len(str(item)) for item in items if isinstance(item, (str, int, float)))
                    + len(str(d)) * max(0, len(items) - 1))
        return filter_(eval_ctx, items, d, attribute)
    return _keeps_flags(bounded, filter_)


def _bounded_tojson(filter_: Any) -> Any:
    """tojson(eval_ctx, value, indent=None): an indent is repeated on every line, times the depth."""
    def bounded(eval_ctx: Any, value: Any, indent: Any = None) -> Any:
        if isinstance(indent, int) and not isinstance(indent, bool) and abs(indent) > 64 or \
                isinstance(indent, str) and len(indent) > 64:
            raise _too_large()
        return filter_(eval_ctx, value, indent)
    return _keeps_flags(bounded, filter_)


def _bounded_format(filter_: Any) -> Any:
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_format(value)
        return filter_(value, *args, **kwargs)
    return bounded


@jinja2.pass_environment
def _bounded_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """Jinja's sum, one step at a time: adding lists in one C call could not be stopped."""
    from jinja2.filters import make_attrgetter
    get = make_attrgetter(environment, attribute) if attribute is not None else (lambda item: item)
    total = start
    for item in iterable:
        total = total + get(item)
        if isinstance(total, (list, tuple, str)) and len(total) > OUTPUT_LIMIT:
            raise BudgetExceeded(f"more than {OUTPUT_LIMIT:,} items")
    return total


def _environment(folder: Path | None, autoescape: bool) -> SandboxedEnvironment:
    env = Sandbox(
        loader=jinja2.FileSystemLoader(str(folder)) if folder else None,
        undefined=_Undefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
    )
    return env


def _compile(env: SandboxedEnvironment, path: Path) -> jinja2.Template:
    try:
        return env.get_template(path.name)
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or path}:{exc.lineno}"
        raise TemplateError(f"{where}: template syntax error: {exc.message}",
                            hint="fix the template; `mailer check CAMPAIGN` shows the next problem") from None
    except UnicodeDecodeError:
        raise TemplateError(f"{path}: the template is not UTF-8") from None
    except BudgetExceeded as exc:  # a constant Jinja evaluates while compiling
        raise TemplateError(f"{path}: the template asks for {exc} for one message",
                            hint=f"one message may take {TIME_LIMIT:g} s and {OUTPUT_LIMIT:,} characters") from None
    except (RecursionError, MemoryError):  # expressions nested thousands deep: ((((…))))
        raise TemplateError(f"{path}: the template's expressions are nested too deeply to compile",
                            hint="write the expression in steps, with {% set %}") from None


def load_templates(campaign: Campaign) -> Templates:
    """Compile the subject and the template files; raise TemplateError with file:line."""
    subject_env = _environment(None, autoescape=False)
    try:
        subject = subject_env.from_string(campaign.subject)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{campaign.path}: [campaign] subject: template syntax error: {exc.message}") from None
    except (RecursionError, MemoryError):
        raise TemplateError(f"{campaign.path}: [campaign] subject: its expressions are nested too deeply to "
                            "compile", hint="write the subject in steps, with {% set %}") from None
    html = text = derived = None
    if campaign.html_template:
        html = _compile(_environment(campaign.html_template.parent, autoescape=True), campaign.html_template)
    if campaign.text_template:
        text = _compile(_environment(campaign.text_template.parent, autoescape=False), campaign.text_template)
    elif campaign.html_template:
        text_env = _environment(campaign.html_template.parent, autoescape=False)
        # Within a message's budget: converting a large static table took inscriptis 22 s for 450 KB,
        # before anything was rendered. Past it, each message's text part is converted on its own,
        # within that message's budget.
        try:
            with _time_budget():
                html_source = campaign.html_template.read_text("utf-8")
                check_parse_cost(html_source)  # lxml, which inscriptis uses, cannot be stopped either
                source = derive_text_template(text_env, html_source)
        except (BudgetExceeded, MemoryError, RecursionError, TooCostly):
            source = None
        if source is not None:
            try:
                derived = text_env.from_string(source)
            except (jinja2.TemplateSyntaxError, RecursionError, MemoryError):
                derived = None
    return Templates(subject, html, text, campaign.html_template, campaign.text_template, derived)


def _template_line(exc: BaseException, path: Path | None) -> int | None:
    tb = exc.__traceback__
    line = None
    wanted = os.path.normpath(str(path)) if path is not None else None
    while tb is not None:
        if wanted is not None and os.path.normpath(tb.tb_frame.f_code.co_filename) == wanted:
            # A frame of the compiled template (an exception Jinja did not rewrite, such as the
            # budget's) is at a line of the generated Python: map it back to the template's.
            compiled = tb.tb_frame.f_globals.get("__jinja_template__")
            line = compiled.get_corresponding_lineno(tb.tb_lineno) if compiled is not None else tb.tb_lineno
        tb = tb.tb_next
    return line


#: What one message's template may take: beyond any, the run stops before sending.
TIME_LIMIT = 2.0          # seconds of CPU
OUTPUT_LIMIT = 1_000_000  # characters (or items) in any one value and in the output
MEMORY_LIMIT = 256 << 20  # bytes the process may grow by while rendering one message
_TICK = 0.05              # the budget is looked at every 50 ms of CPU


class BudgetExceeded(BaseException):
    """A template took more than its time, output or memory budget for one message.

    A BaseException, as KeyboardInterrupt is: the timer's signal lands wherever the work is, and
    an `except Exception` there (in a library, or around a C call that returned) must not swallow it.
    """

    line: int | None = None  # the template line being written when the output budget ran out


_timing = threading.local()
_timing_installed = False
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _resident() -> int | None:
    """This process's resident memory in bytes (Linux), None where it cannot be read."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _install_timing() -> None:
    global _timing_installed
    signal.signal(signal.SIGVTALRM, _tick)
    _timing_installed = True


def _tick(signum: int, frame: Any) -> None:
    """Every _TICK of CPU while a message renders: past the time budget, or grown past the memory
    budget since the first tick, the work stops wherever it is. A message that renders in less
    than a tick (all of them, normally) costs nothing here."""
    if not getattr(_timing, "armed", False):
        return
    if time.process_time() - _timing.started >= TIME_LIMIT:  # not ticks: one C call gets one tick
        raise BudgetExceeded(f"more than {TIME_LIMIT:g} s")
    resident = _resident()
    if resident is None:
        return
    if _timing.baseline is None:
        _timing.baseline = resident
    elif resident - _timing.baseline > MEMORY_LIMIT:
        raise BudgetExceeded(f"more than {MEMORY_LIMIT >> 20} MB of memory")


@contextmanager
def _time_budget() -> Iterator[None]:
    """SIGVTALRM every _TICK of CPU, where signals can be used (the main thread of a process: the
    CLI, render workers); a loop nested in a loop, or one piling up values, is then stopped
    wherever it is. CPU time (ITIMER_VIRTUAL), not the wall clock: the real-time timer belongs to
    alarm() users such as pytest-timeout, and a runaway template is one that computes. The handler
    is installed once per process (installing it costs more than rendering a small template).
    One C call cannot be interrupted: the sandbox refuses beforehand those that would make a value
    larger than OUTPUT_LIMIT (see Sandbox)."""
    if getattr(_timing, "armed", False) or threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        yield
        return
    if not _timing_installed:
        _install_timing()
    _timing.armed, _timing.started, _timing.baseline = True, time.process_time(), None
    capped = _cap_address_space()
    signal.setitimer(signal.ITIMER_VIRTUAL, _TICK, _TICK)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        _timing.armed = False
        if capped is not None:
            resource.setrlimit(resource.RLIMIT_AS, capped)


#: Address space the process may add while one message renders, on top of MEMORY_LIMIT: room for
#: the allocator's slack, so that only a runaway reaches the cap.
_ADDRESS_SPACE_MARGIN = 128 << 20


#: (when, size): the process's address space as last read (the cap allows _ADDRESS_SPACE_MARGIN of
#: growth since then)
_size_seen: list[float] = [float("-inf"), 0]


def _virtual_size() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[0]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def _cap_address_space() -> tuple[int, int] | None:
    """Cap the process's address space at what it has now plus the memory budget, for one message:
    a single C call (int.to_bytes(10**9), str(a list holding one long string a thousand times),
    str.translate to long strings, the HTML parser cloning formatting elements) then fails with a
    MemoryError where it would have taken gigabytes before the timer could look. Returns the
    limits to put back, None when nothing was capped."""
    if resource is None:
        return None
    now = time.monotonic()
    if now - _size_seen[0] > 0.5:  # reading /proc costs more than rendering a small message: twice a second
        _size_seen[:] = [now, _virtual_size() or 0]
    size = int(_size_seen[1])
    if not size:
        return None
    try:
        previous = resource.getrlimit(resource.RLIMIT_AS)
        cap = size + MEMORY_LIMIT + _ADDRESS_SPACE_MARGIN
        soft, hard = previous
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if soft != resource.RLIM_INFINITY and soft <= cap:
            return None
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (OSError, ValueError):
        return None
    return previous


def _render_template(template: jinja2.Template, context: dict[str, Any]) -> str:
    """template.render(context), without merging the environment's globals into each context.

    Template.render copies the globals (a ChainMap, iterated in Python) for every
    call; here they are merged once per template and the context is passed as is
    (`shared=True`). Errors go through the environment as in Template.render.
    """
    merged = _GLOBALS.get(id(template))
    if merged is None or merged[0] is not template:
        merged = _GLOBALS[id(template)] = (template, dict(template.globals))
    ctx = template.new_context({**merged[1], **context}, shared=True)
    try:
        pieces, size = [], 0
        render = template.root_render_func(ctx)
        for piece in render:
            size += len(piece)
            if size > OUTPUT_LIMIT:
                exceeded = BudgetExceeded(f"more than {OUTPUT_LIMIT:,} characters of output")
                exceeded.line = _writing_line(render)
                raise exceeded
            pieces.append(piece)
        return "".join(pieces)
    except BudgetExceeded:
        raise
    except Exception:
        return template.environment.handle_exception()


_GLOBALS: dict[int, tuple[jinja2.Template, dict[str, Any]]] = {}


def _writing_line(render: Any) -> int | None:
    """The template line the suspended render generator (or the block or macro it delegates to)
    was writing."""
    line = None
    while render is not None and getattr(render, "gi_frame", None) is not None:
        frame = render.gi_frame
        compiled = frame.f_globals.get("__jinja_template__")
        if compiled is not None:
            line = compiled.get_corresponding_lineno(frame.f_lineno)
        render = render.gi_yieldfrom
    return line


class _Footer:
    """The package's footer templates, loaded once (their wording is in mailer/locales/)."""

    def __init__(self) -> None:
        folder = resources.files("mailer") / "footer"
        env = Sandbox(undefined=_Undefined, autoescape=True, keep_trailing_newline=True)
        self.html = env.from_string((folder / "footer.html.j2").read_text("utf-8"))
        text_env = Sandbox(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
        self.text = text_env.from_string((folder / "footer.txt.j2").read_text("utf-8"))


_FOOTER: _Footer | None = None


def footer_templates() -> _Footer:
    global _FOOTER
    if _FOOTER is None:
        _FOOTER = _Footer()
    return _FOOTER


@dataclass(frozen=True)
class RenderedMessage:
    """What one recipient would receive, before the envelope (Date, Message-ID)."""

    to_address: str
    to_name: str
    subject: str
    # The bodies as pieces, the footer's markup being `Fixed` (see mime.quoted_printable_pieces);
    # html_pieces is empty when the campaign has no HTML template.
    text_pieces: tuple[str, ...]
    html_pieces: tuple[str, ...]
    unsubscribe_url: str
    unsubscribe_mailto: str | None
    address_hash: str
    footer_problems: tuple[str, ...]
    #: what was left out of the template without harm (a web font stylesheet), said once per run
    notes: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "".join(self.text_pieces)

    @property
    def html(self) -> str | None:
        return "".join(self.html_pieces) if self.html_pieces else None


def contact_context(contact: ContactData) -> View:  # its fields are _CONTACT_FIELDS
    return View(
        email=contact.email, first_name=contact.first_name, last_name=contact.last_name,
        company=contact.company, job_title=contact.job_title, industry=contact.industry,
        country=contact.country, kind=contact.kind, source=contact.source,
        member=contact.member, attrs=dict(contact.attrs),
    )


_MARKED_FIELDS = ("email", "first_name", "last_name", "company", "job_title", "industry", "country", "source")


def contact_values(contact: ContactData) -> tuple[list[str], tuple[Any, ...]]:
    """The contact's non-empty text values, in the order of their marks in a probe rendering
    (mailer.isolation.value_mark), and what else the probe depends on (kind, membership, which
    values are empty, the custom attributes' names)."""
    fields = [getattr(contact, name) for name in _MARKED_FIELDS]
    attrs = contact.attrs
    values = [v for v in fields if v] + [v for v in attrs.values() if v]
    shape = (contact.kind, contact.member, tuple(bool(v) for v in fields), tuple((n, bool(v)) for n, v in attrs.items()))
    return values, shape


def marked_contact(contact: ContactData) -> View:
    """The contact as a probe rendering sees it: each non-empty text value replaced by its mark,
    numbered in the order of contact_values."""
    count = 0

    def mark(value: str) -> str:
        nonlocal count
        if not value:
            return value
        count += 1
        return value_mark(count - 1)
    fields = {name: mark(getattr(contact, name)) for name in _MARKED_FIELDS}
    attrs = {name: mark(value) for name, value in contact.attrs.items()}
    return View(**fields, kind=contact.kind, member=contact.member, attrs=attrs)


class Renderer:
    """Renders one campaign's messages. Build once per run; `render` per recipient."""

    #: reuse the rebuild of the template's HTML between recipients (False: rebuild each message)
    reuse_rebuilds = True

    def __init__(self, config: Config, campaign: Campaign, keys: Keys, templates: Templates | None = None,
                 dkim: DkimSigner | None = None) -> None:
        self.config = config
        self.dkim = dkim
        self.campaign = campaign
        self.keys = keys
        self.templates = templates or load_templates(campaign)
        self.footer = footer_templates()
        self.strings = strings(campaign.locale).footer
        self.from_name, self.from_address = parse_from_header(campaign.from_)
        self.from_domain = self.from_address.rpartition("@")[2]
        org = config.organization
        self.organization = View(name=org.name, postal_address=org.postal_address,
                                            privacy_url=org.privacy_url, contact_email=org.contact_email)
        self.campaign_view = View(id=campaign.id, kind=campaign.kind, locale=campaign.locale)
        self.roles = config.compliance.role_addresses()
        #: messages for `send --test-to`: their unsubscribe tokens record nothing when used
        self.test = False
        #: the rebuild of a probe rendering per shape of contact (None: rebuilt for each message)
        self._reuse: dict[tuple[Any, ...], Reuse | None] = {}
        self.base_url = config.unsubscribe.base_url.rstrip("/")
        self.list_id = f"{campaign.id}.{self.from_domain}"
        self.feedback_id = f"{campaign.id}:{campaign.kind}:mailer"
        # The footer differs between recipients only by the source sentence and the
        # unsubscribe URL: render it once with markers, fill them in per message.
        marked = {"organization": self.organization, "unsubscribe_url": _URL, "text": self.strings,
                  "source_sentence": _SENTENCE, "locale": campaign.locale}
        self._text_footer = _split_markers(self.footer.text.render(marked).strip("\n") + "\n")
        typeset_strings = {k: typeset(campaign.locale, v) for k, v in dataclasses.asdict(self.strings).items()}
        self._html_footer = _split_markers(self.footer.html.render({**marked, "text": View(**typeset_strings)}))
        self.from_header = mailbox(display_name(self.from_name), self.from_address, "From")
        self.reply_to_header = ""
        if campaign.reply_to:
            reply_name, reply_address = parse_from_header(campaign.reply_to)
            self.reply_to_header = mailbox(display_name(reply_name), reply_address, "Reply-To")

    # ------------------------------------------------------------------ pieces

    def source_sentence(self, contact: ContactData) -> str:
        if self.campaign.kind == "members" and contact.member:
            return fill(self.campaign.locale, self.strings.member, organization=self.organization.name)
        if contact.source:
            return self.strings.collected.format(source=contact.source)
        if self.roles.exempt(contact.address.key, contact.kind):
            return self.strings.generic
        return self.strings.collected.format(source="—")

    def unsubscribe_for(self, contact: ContactData) -> tuple[str, str, str | None]:
        digest = mailbox_hash(self.keys.address, contact.address.key)
        token = sign(self.keys, self.campaign.id, self.campaign.locale, digest, test=self.test)
        url = f"{self.base_url}/u/{token}"
        mailto = None
        if self.config.unsubscribe.mailto:
            mailto = f"mailto:{self.config.unsubscribe.mailto}?subject={quote('unsubscribe-' + token)}"
        return digest, url, mailto

    def _render(self, template: jinja2.Template, path: Path | None, context: dict[str, Any],
                contact: ContactData, what: str) -> str:
        try:
            return _render_template(template, context)
        except BudgetExceeded as exc:
            line = _template_line(exc, path) or exc.line
            where = f"{path}:{line}" if path and line else (str(path) if path else what)
            raise TemplateError(f"{where}: the template took {exc} for one message (rendering for {contact.email})",
                                hint="look for a loop inside a loop, or a repeated string; one message may take "
                                     f"{TIME_LIMIT:g} s and {OUTPUT_LIMIT:,} characters") from None
        except MemoryError as exc:
            line = _template_line(exc, path)
            where = f"{path}:{line}" if path and line else (str(path) if path else what)
            raise TemplateError(f"{where}: the template took more than {MEMORY_LIMIT >> 20} MB of memory for one "
                                f"message (rendering for {contact.email})",
                                hint="look for a loop inside a loop, or a repeated string; one message may take "
                                     f"{TIME_LIMIT:g} s and {OUTPUT_LIMIT:,} characters") from None
        except jinja2.UndefinedError as exc:
            line = _template_line(exc, path)
            where = f"{path}:{line}" if path and line else (str(path) if path else what)
            raise TemplateError(f"{where}: {exc.message} (rendering for {contact.email})",
                                hint="check the variable's spelling; contact fields are contact.first_name, "
                                     "contact.company, … and CSV extra columns are contact.attrs.NAME") from None
        except jinja2.TemplateError as exc:
            line = _template_line(exc, path)
            where = f"{path}:{line}" if path and line else (str(path) if path else what)
            raise TemplateError(f"{where}: {exc} (rendering for {contact.email})") from None
        except Exception as exc:  # a filter or test raising on this contact's data
            line = _template_line(exc, path)
            where = f"{path}:{line}" if path and line else (str(path) if path else what)
            raise TemplateError(f"{where}: {type(exc).__name__}: {exc} (rendering for {contact.email})") from None

    # ------------------------------------------------------------------ the message

    def render(self, contact: ContactData) -> RenderedMessage:
        """One recipient's message, within the time budget (TIME_LIMIT for the whole message)."""
        # The exceptions are handled once the budget's timer and memory cap are off (a tick
        # landing in a handler, or in the budget's own exit, is one of them too).
        try:
            with _time_budget():
                return self._render_message(contact)
        except BudgetExceeded as exc:  # outside the template itself: the text part, the rebuild
            where = self.templates.html_path or self.templates.text_path
            raise TemplateError(f"{where}: building one message took {exc} (for {contact.email})",
                                hint="the template's output is too large or too deeply nested, or its "
                                     "stylesheet's selectors too costly to match; make it smaller") from None
        except TooCostly as exc:  # markup the HTML parser would take minutes or gigabytes on
            where = self.templates.html_path or self.templates.text_path
            raise TemplateError(f"{where}: {exc} (for {contact.email})",
                                hint="close the elements the template opens; one message may take "
                                     f"{TIME_LIMIT:g} s and {MEMORY_LIMIT >> 20} MB") from None
        except (MemoryError, SelectolaxError):  # the parser or the text part past the memory cap
            where = self.templates.html_path or self.templates.text_path
            raise TemplateError(f"{where}: building one message took more than {MEMORY_LIMIT >> 20} MB of "
                                f"memory (for {contact.email})",
                                hint="the template's output is too large or too deeply nested; make it "
                                     "smaller") from None
        except RecursionError:  # the text part of markup nested thousands deep
            where = self.templates.html_path or self.templates.text_path
            raise TemplateError(f"{where}: the template's markup is nested too deeply (for {contact.email})",
                                hint="close the elements the template opens") from None

    def _render_message(self, contact: ContactData) -> RenderedMessage:
        digest, url, mailto = self.unsubscribe_for(contact)
        context = {"contact": contact_context(contact), "campaign": self.campaign_view,
                   "organization": self.organization, "unsubscribe_url": url}
        subject = one_line(self._render(self.templates.subject, None, context, contact, "[campaign] subject"))
        if len(subject) > SUBJECT_LIMIT:
            raise TemplateError(f"{self.campaign.path}: [campaign] subject: the subject for {contact.email} is "
                                f"{len(subject):,} characters long, more than the {SUBJECT_LIMIT} allowed",
                                hint="shorten the subject, or cut a long contact value in it, e.g. "
                                     "{{ contact.first_name|truncate(40) }}")
        sentence = self.source_sentence(contact)
        html_body = None
        if self.templates.html is not None:
            html_body = self._render(self.templates.html, self.templates.html_path, context, contact, "HTML template")
            # before any parser sees it (lxml, for the text part, chokes on the same markup as lexbor)
            check_parse_cost(html_body)
        if self.templates.text is not None:
            text_body = self._render(self.templates.text, self.templates.text_path, context, contact, "text template")
        elif self.templates.text_from_html is not None:
            text_body = self._render(self.templates.text_from_html, self.templates.html_path, context, contact,
                                     "text part derived from the HTML template")
        else:
            text_body = inscriptis.get_text(html_body or "", _TEXT_CONFIG).strip("\n") + "\n"
        text_body = collapse_blank_lines(text_body.strip("\n"))
        text_pieces = (text_body.rstrip() + "\n\n", *_fill(self._text_footer, sentence, url))
        text = "".join(text_pieces)
        html_pieces: tuple[str, ...] = ()
        required = [self.organization.name, self.organization.postal_address, sentence]
        where = self.templates.text_path or self.templates.html_path or "the text part"
        problems = [*check_footer_text(text, required, url), *(f"{where}: {p}" for p in text_problems(text_body, url))]
        notes: tuple[str, ...] = ()
        if html_body is not None:
            # The template's markup rebuilt so that nothing in it can reach the footer, which
            # follows it as the last child of <body> (mailer.isolation).
            isolated = self._rebuild(contact, html_body, url)
            before, after = isolated.around_footer(self.campaign.locale)
            html_pieces = (before, *_fill(self._html_footer, str(escape(typeset(self.campaign.locale, sentence))),
                                          str(escape(url))), after)
            problems += [self._where_in_html(p) for p in isolated.problems]
            too_big = size_problem("".join(html_pieces))
            if too_big:
                problems.append(f"{self.templates.html_path}: {too_big}")
            notes = tuple(self._where_in_html(n) for n in isolated.notes)
        # Without a person's name, the organisation's: a bare To whose domain the Subject starts with
        # ("PME SARL, votre audit…" to contact@pme.example) is how brand phishing looks to filters
        # (SpamAssassin's PDS_BRAND_SUBJ_NAKED_TO scored the sample's message 1.0 for it).
        name = display_name(" ".join(p for p in (contact.first_name, contact.last_name) if p) or contact.company)
        return RenderedMessage(to_address=contact.email, to_name=name, subject=subject, text_pieces=text_pieces,
                               html_pieces=html_pieces, unsubscribe_url=url, unsubscribe_mailto=mailto,
                               address_hash=digest, footer_problems=tuple(problems), notes=notes)

    def _rebuild(self, contact: ContactData, html: str, url: str) -> Isolated:
        """isolate(html, url), done once per run for each shape of contact and reused for the
        messages whose HTML differs only by the recipient's values (mailer.isolation.Reuse)."""
        if not self.reuse_rebuilds:
            return isolate(html, url)
        values, shape = contact_values(contact)
        if shape in self._reuse:
            reuse = self._reuse[shape]
        else:
            reuse = self._probe(marked_contact(contact)) if len(self._reuse) < 64 else None
            if len(self._reuse) < 64:
                self._reuse[shape] = reuse
        if reuse is not None:
            done = reuse.apply(html, values, url)
            if done is not None:
                return done
        return isolate(html, url)

    def _probe(self, view: View) -> Reuse | None:
        """The rebuild of the HTML template rendered with marks for the contact's values."""
        assert self.templates.html is not None
        context = {"contact": view, "campaign": self.campaign_view, "organization": self.organization,
                   "unsubscribe_url": URL_MARK}
        try:
            probe = _render_template(self.templates.html, context)
        except BudgetExceeded:
            raise
        except Exception:  # noqa: BLE001 - a template that cannot render marks is rebuilt each time
            return None
        return Reuse.build(probe)

    def _where_in_html(self, said: str) -> str:
        """FILE:LINE: what isolation said, the line being where the element, rule, declaration or
        link it names first appears in the template's source (none when the template computes it)."""
        path = self.templates.html_path
        line = _line_of(self._html_source, said)
        return f"{path}:{line}: {said}" if line else f"{path}: {said}"

    @functools.cached_property
    def _html_source(self) -> str:
        path = self.templates.html_path
        try:
            return path.read_text("utf-8") if path is not None else ""
        except (OSError, UnicodeDecodeError):
            return ""

    def message_id(self) -> str:
        return f"<{uuid.uuid4().hex}.{self.campaign.id}@{self.from_domain}>"

    def build_mime(self, message: RenderedMessage, message_id: str, when: datetime | None = None) -> bytes:
        """The full RFC 5322 message bytes, ready for a transport."""
        targets = f"<{message.unsubscribe_url}>"
        if message.unsubscribe_mailto:  # on a line of its own when both do not fit on one (RFC 5322 folding)
            joint = ", " if 22 + len(targets) + len(message.unsubscribe_mailto) <= 78 else f",{CRLF} "
            targets += f"{joint}<{message.unsubscribe_mailto}>"
        list_id = f"{self.campaign.id} <{self.list_id}>"
        if 9 + len(list_id) > 78:
            list_id = f"{self.campaign.id}{CRLF} <{self.list_id}>"
        headers = [
            ("From", self.from_header),
            ("To", mailbox(message.to_name, message.to_address, "To")),
            ("Subject", encode_words(message.subject, "Subject")),
            ("Date", format_datetime(when or datetime.now(UTC))),
            ("Message-ID", message_id),
        ]
        if self.reply_to_header:
            headers.append(("Reply-To", self.reply_to_header))
        headers += [
            ("List-Unsubscribe", targets),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("List-Id", list_id),
            # Gmail sends no per-message complaint reports; its feedback loop (Postmaster Tools)
            # counts spam reports per identifier of this header, read from the right: the sender
            # ("mailer", 5 to 15 characters), the campaign kind, the campaign. DKIM-signed.
            ("Feedback-ID", self.feedback_id),
        ]
        data = build_message(headers, message.text_pieces, message.html_pieces or None)
        return self.dkim.sign(data) if self.dkim is not None else data


_MARKER = re.compile(f"({_SENTENCE}|{_URL})")


def _split_markers(marked: str) -> list[str]:
    """The footer rendered with markers, as pieces: Fixed markup, and the markers themselves."""
    return [p if p in (_SENTENCE, _URL) else Fixed(p) for p in _MARKER.split(marked) if p]


def _fill(pieces: list[str], sentence: str, url: str) -> list[str]:
    return [sentence if p == _SENTENCE else url if p == _URL else p for p in pieces]


# What a problem or note names, as it may be written in the template's source.
_NAMED = (
    re.compile(r"^<([a-zA-Z][\w-]*)"),                                  # an element
    re.compile(r"^selector '([^']+)'"),                                 # a selector
    re.compile(r"^<\w+ style>: ([\w-]+): "),                            # an inline declaration
    re.compile(r"^rule [^:]*: ([\w-]+): "),                              # a stylesheet declaration
    re.compile(r"^(@[\w-]+)"),                                           # an at-rule
    re.compile(r"goes to (\S+): only"),                                  # a link's target
)


def _line_of(source: str, said: str) -> int | None:
    for pattern in _NAMED:
        match = pattern.search(said)
        if match:
            needle = match.group(1)
            if pattern is _NAMED[0]:
                needle = "<" + needle
            at = source.lower().find(needle.lower())
            return source.count("\n", 0, at) + 1 if at >= 0 else None
    return None

