"""Would a person actually *see* the footer? (the `footer-missing` rule)

Appending a footer is not enough: a template can leave a comment, a <textarea>
or a <style> open so that the footer becomes invisible text, wrap it in
`display:none`, or hide it with a stylesheet rule. We parse the rendered HTML
as a mail client would, find the footer element, and check that neither it, its
ancestors nor its content is hidden, by attributes, inline styles or the
document's own stylesheets (media queries included). When in doubt (a selector
we cannot evaluate, an external stylesheet) we refuse: the message is blocked,
not sent without a visible opt-out.

An element of the template moved where it could cover the footer (absolute,
fixed or sticky positioning, a relative offset, a transform, a large negative
margin) is refused too: where it lands depends on the client's layout, which
we do not compute. Known limit: text coloured like its background outside the
footer is not detected.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from itertools import zip_longest

import lxml.html
import tinycss2
from cssselect import SelectorError
from lxml.cssselect import CSSSelector
from lxml.etree import ParserError, XPathError

FOOTER_ID = "mailer-footer"

# Elements that lay their content out as ordinary, visible text.
RENDERED_CONTAINERS = frozenset({
    "html", "body", "div", "span", "p", "table", "tbody", "thead", "tfoot", "tr", "td", "th",
    "center", "font", "section", "article", "main", "header", "footer", "aside", "nav",
    "blockquote", "b", "i", "u", "em", "strong", "ul", "ol", "li", "dl", "dd", "dt", "figure",
    "figcaption", "address", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "code", "big", "form",
    "fieldset", "label", "strike", "s", "tt", "var", "cite", "abbr", "mark", "small", "sup", "sub",
})

_PX = re.compile(r"^(-?[\d.]+)(px|pt|em|rem|%)?$")
_PSEUDO = re.compile(r"::?[a-zA-Z-]+(\([^)]*\))?")
_DYNAMIC = re.compile(r":(hover|focus|active|visited|link|focus-within|focus-visible|target)\b")


def _number(value: str) -> tuple[float, str] | None:
    match = _PX.match(value.strip().lower())
    if not match:
        return None
    try:
        return float(match.group(1)), match.group(2) or ""
    except ValueError:
        return None


def hiding_reason(prop: str, value: str) -> str | None:
    """Why `prop: value` would hide or unreadably shrink an element, else None."""
    v = value.strip().lower()
    if prop == "display" and v == "none":
        return "display:none"
    if prop == "visibility" and v in ("hidden", "collapse"):
        return f"visibility:{v}"
    if prop == "mso-hide" and v == "all":
        return "mso-hide:all"
    if prop == "opacity":
        n = _number(v)
        if n is not None and (n[0] / 100 if n[1] == "%" else n[0]) < 0.5:
            return f"opacity:{v}"
    if prop == "font-size":
        n = _number(v)
        if n is not None and (
                (n[1] in ("px", "") and n[0] < 8) or (n[1] == "pt" and n[0] < 6)
                or (n[1] in ("em", "rem") and n[0] < 0.5) or (n[1] == "%" and n[0] < 50)):
            return f"font-size:{v}"
    if prop in ("height", "max-height", "width", "max-width"):
        n = _number(v)
        if n is not None and n[0] <= 2:
            return f"{prop}:{v}"
    if prop == "position" and v in ("absolute", "fixed"):
        return f"position:{v}"
    if prop == "text-indent":
        n = _number(v)
        if n is not None and n[0] < -20:
            return f"text-indent:{v}"
    if prop in ("clip", "clip-path") and v not in ("auto", "none", "unset", "initial"):
        return f"{prop}:{v}"
    if prop == "transform" and v not in ("none", "unset", "initial"):
        return f"transform:{v}"
    if prop == "color" and v in ("transparent", "rgba(0,0,0,0)", "rgba(0, 0, 0, 0)"):
        return "color:transparent"
    if prop == "zoom":
        n = _number(v)
        if n is not None and n[0] < 0.5:
            return f"zoom:{v}"
    if prop in ("margin-left", "margin-top", "left", "top"):
        n = _number(v)
        if n is not None and n[0] < -50:
            return f"{prop}:{v}"
    return None


_OFFSETS = ("top", "bottom", "left", "right", "inset")
_MARGINS = ("margin", "margin-top", "margin-bottom", "margin-left", "margin-right")
_OVERLAY_PROPS = frozenset({"position", "transform", *_OFFSETS, *_MARGINS})


def _large_negative(value: str) -> bool:
    """A length below -10px (or -1em, or any negative percentage) in a margin value."""
    for part in value.split():
        n = _number(part)
        if n is not None and n[0] < 0 and (n[1] == "%" or n[0] < (-1 if n[1] in ("em", "rem") else -10)):
            return True
    return False


def overlay_reason(declarations: Iterable[_Declaration]) -> str | None:
    """Why an element with these declarations could land over the footer, else None."""
    decls = list(declarations)
    relative = False
    for decl in decls:
        v = decl.value.strip().lower()
        if decl.prop == "position" and v in ("absolute", "fixed", "sticky"):
            return f"position:{v}"
        relative = relative or (decl.prop == "position" and v == "relative")
        if decl.prop == "transform" and v not in ("none", "unset", "initial"):
            return f"transform:{v}"
        if decl.prop in _MARGINS and _large_negative(v):
            return f"{decl.prop}:{v}"
    if relative:
        for decl in decls:
            v = decl.value.strip().lower()
            if decl.prop in _OFFSETS and v not in ("auto", "unset", "initial", "inherit") and \
                    any((n := _number(part)) is None or n[0] != 0 for part in v.split()):
                return f"position:relative with {decl.prop}:{v}"
    return None


@dataclass(frozen=True)
class _Declaration:
    prop: str
    value: str
    important: bool


def _declarations(tokens: list | str) -> list[_Declaration]:
    found = []
    for item in tinycss2.parse_declaration_list(tokens, skip_comments=True, skip_whitespace=True):
        if item.type == "declaration":
            found.append(_Declaration(item.lower_name, tinycss2.serialize(item.value).strip(), item.important))
    return found


@lru_cache(maxsize=4096)
def _inline(style: str) -> tuple[_Declaration, ...]:
    return tuple(_declarations(style))


@lru_cache(maxsize=4096)
def _inline_reason(style: str, ignored: frozenset[str]) -> str | None:
    for decl in _inline(style):
        if decl.prop not in ignored:
            reason = hiding_reason(decl.prop, decl.value)
            if reason:
                return reason
    return None


@dataclass(frozen=True)
class _HidingRule:
    selector: str
    decl: _Declaration
    reason: str


@lru_cache(maxsize=256)
def _stylesheet(css: str) -> tuple[tuple[tuple[str, _Declaration], ...], tuple[str, ...]]:
    """Every (selector, declaration) of a stylesheet, conditional rules (@media…) included,
    and its problems, such as @import."""
    found: list[tuple[str, _Declaration]] = []
    problems: list[str] = []

    def walk(nodes: list) -> None:
        for node in nodes:
            if node.type == "qualified-rule":
                selector = tinycss2.serialize(node.prelude).strip()
                found.extend((selector, decl) for decl in _declarations(node.content))
            elif node.type == "at-rule":
                name = node.lower_at_keyword
                if name == "import":
                    problems.append("the HTML imports an external stylesheet (@import) that mailer cannot check")
                elif node.content is not None and name in ("media", "supports", "document", "layer", "container"):
                    walk(tinycss2.parse_rule_list(node.content, skip_comments=True, skip_whitespace=True))

    walk(tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True))
    return tuple(found), tuple(problems)


@lru_cache(maxsize=256)
def _hiding_rules(css: str) -> tuple[tuple[_HidingRule, ...], tuple[str, ...]]:
    """(rules that could hide something, problems such as @import)."""
    declarations, problems = _stylesheet(css)
    rules = [_HidingRule(selector, decl, reason) for selector, decl in declarations
             if (reason := hiding_reason(decl.prop, decl.value))]
    return tuple(rules), problems


@lru_cache(maxsize=256)
def _moving_rules(css: str) -> tuple[tuple[str, _Declaration], ...]:
    """(selector, declaration) of the rules that could move an element (see overlay_reason)."""
    return tuple((selector, decl) for selector, decl in _stylesheet(css)[0] if decl.prop in _OVERLAY_PROPS)


@lru_cache(maxsize=1024)
def _compiled(selector: str) -> CSSSelector | None:
    """A selector made broader (no pseudo-classes/elements) so matching errs on the safe side."""
    broad = _PSEUDO.sub("", _DYNAMIC.sub("", selector)).strip() or "*"
    try:
        return CSSSelector(broad)
    except (SelectorError, XPathError, ValueError):
        return None


# Inherited properties that the footer's own !important inline styles reset, so an
# ancestor setting them cannot hide the footer.
_RESET_BY_FOOTER = frozenset({"font-size", "line-height", "color", "text-indent"})


def _attribute_reason(el: lxml.html.HtmlElement) -> str | None:
    if el.get("hidden") is not None:
        return "the hidden attribute"
    if (el.get("aria-hidden") or "").strip().lower() == "true":
        return "aria-hidden=\"true\""
    return None


def _describe(el: lxml.html.HtmlElement) -> str:
    ident = f"#{el.get('id')}" if el.get("id") else ""
    classes = "." + ".".join(el.get("class").split()) if el.get("class") else ""
    return f"<{el.tag}{ident}{classes}>"


def check_footer_html(html: str, required_texts: list[str], unsubscribe_url: str) -> list[str]:
    """Problems that would keep a reader from seeing the footer; empty when it is visible."""
    try:
        doc = lxml.html.document_fromstring(html)
    except (ParserError, ValueError) as exc:
        return [f"the HTML part cannot be parsed: {exc}"]
    footers = doc.xpath(f"//*[@id='{FOOTER_ID}']")
    if not footers:
        return ["the footer is swallowed by the template's HTML (an unclosed comment, <style>, "
                "<script>, <textarea>, <title> or attribute before it)"]
    footer = footers[-1]
    problems: list[str] = []

    for link in doc.xpath("//link[@rel]"):
        if "stylesheet" in (link.get("rel") or "").lower():
            problems.append("the HTML links an external stylesheet that mailer cannot check")
    sheet_rules: list[_HidingRule] = []
    moving: list[tuple[str, _Declaration]] = []
    for style in doc.xpath("//style"):
        css = style.text_content()
        found, sheet_problems = _hiding_rules(css)
        sheet_rules.extend(found)
        problems.extend(sheet_problems)
        moving.extend(_moving_rules(css))

    sheet_hidden: dict[lxml.html.HtmlElement, list[_HidingRule]] = {}
    for rule in sheet_rules:
        compiled = _compiled(rule.selector)
        matched = doc.iter() if compiled is None else compiled(doc)
        for el in matched:
            sheet_hidden.setdefault(el, []).append(rule)

    def reason_for(el: lxml.html.HtmlElement, ignored: frozenset[str] = frozenset()) -> str | None:
        attribute = _attribute_reason(el)
        if attribute:
            return attribute
        style = el.get("style") or ""
        reason = _inline_reason(style, ignored)
        if reason:
            return reason
        inline = _inline(style)
        for rule in sheet_hidden.get(el, ()):
            if rule.decl.prop in ignored:
                continue
            # An inline declaration beats a normal stylesheet rule. Against an !important rule
            # we do not count on our inline !important: some webmail sanitisers strip it.
            overridden = not rule.decl.important and any(d.prop == rule.decl.prop for d in inline)
            if not overridden:
                return f"{rule.reason} from the stylesheet rule '{rule.selector}'"
        return None

    for ancestor in footer.iterancestors():
        if not isinstance(ancestor.tag, str):
            continue
        if ancestor.tag not in RENDERED_CONTAINERS:
            problems.append(f"the footer ends up inside {_describe(ancestor)}, which does not display it "
                            "(is that element left unclosed in the template?)")
            continue
        reason = reason_for(ancestor, _RESET_BY_FOOTER)
        if reason:
            problems.append(f"the footer is inside {_describe(ancestor)}, hidden by {reason}")

    own = reason_for(footer)
    if own:
        problems.append(f"the footer itself is hidden by {own}")

    # Elsewhere in the body: nothing may be moved where it could cover the footer.
    sheet_moved: dict[lxml.html.HtmlElement, list[_Declaration]] = {}
    for selector, decl in moving:
        compiled = _compiled(selector)
        for el in doc.iter() if compiled is None else compiled(doc):
            sheet_moved.setdefault(el, []).append(decl)
    body = doc.find("body")
    beside = set(footer.iter()) | set(footer.iterancestors())
    for el in body.iter() if body is not None else ():
        if not isinstance(el.tag, str) or el in beside:
            continue
        style = el.get("style")
        if style is None and el not in sheet_moved:
            continue
        inline = [d for d in _inline(style or "") if d.prop in _OVERLAY_PROPS]
        reason = overlay_reason([*sheet_moved.get(el, ()), *inline])
        if reason:
            problems.append(f"{_describe(el)} is moved by {reason} and could cover the footer "
                            "(mailer cannot tell where it lands; lay the email out without it)")
            break

    visible_text: list[str] = []
    visible_links: list[str] = []

    def collect(el: lxml.html.HtmlElement) -> None:
        if not isinstance(el.tag, str):
            return
        reason = reason_for(el) if el is not footer else None
        if reason:
            problems.append(f"footer content {_describe(el)} is hidden by {reason}")
            return
        if el.tag == "a" and el.get("href"):
            visible_links.append(el.get("href"))
        if el.text:
            visible_text.append(el.text)
        for child in el:
            collect(child)
            if child.tail:
                visible_text.append(child.tail)

    collect(footer)
    shown = " ".join(" ".join(visible_text).split())
    for text in required_texts:
        if " ".join(text.split()) not in shown:
            problems.append(f"the footer does not show {text!r}")
    if unsubscribe_url not in visible_links:
        problems.append("the footer has no visible unsubscribe link")
    return problems


def check_footer_text(text: str, required_texts: list[str], unsubscribe_url: str) -> list[str]:
    flat = " ".join(text.split())
    problems = [f"the text part does not show {t!r}" for t in required_texts if " ".join(t.split()) not in flat]
    if unsubscribe_url not in text:
        problems.append("the text part has no unsubscribe URL")
    return problems


# --------------------------------------------------------------------------- verdict reuse

# Elements whose content is not parsed as markup: a value inside them is not "just text".
_RAW_TEXT = frozenset({"style", "script", "title", "textarea", "xmp", "iframe", "noembed", "noframes",
                       "noscript", "plaintext"})
_MARK = "\ue012"  # a private-use character: ordinary text to the parser, never in a tag or entity name
_NOT_TEXT_SAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f<>\"'\ue012]")
_BLANK = " \t\n\r"


def text_safe(value: str) -> bool:
    """Can `value` (already HTML-escaped) only ever be the content of a text node, whatever it is?"""
    return bool(value.strip(_BLANK)) and not _NOT_TEXT_SAFE.search(value)


class FooterVerdicts:
    """Reuses the footer check's verdict across messages whose HTML differs only by text.

    The check parses every message (the costliest step of rendering). Most messages
    of a campaign are the same markup with different names in it, and text cannot
    hide anything: only markup, attributes and stylesheets can. So the recipient's
    values (HTML-escaped, non-blank, without control characters or quotes) are
    masked in the template's output, and the masked body is the key. The first
    message with a given key is checked in full, and its verdict is reused only if
    (1) the footer was visible, (2) every mask follows a complete tag (the parser
    is reading text there, not a tag, whatever the value starts with) and (3)
    parsing the masked body gives the same tree as the real message, with every
    mask inside an ordinary text node (not an attribute, a comment, <style>,
    <title>, <textarea>…). Then any message with the same key parses to that tree
    too: escaped text read as text cannot change how the markup around it is read.
    Otherwise (a value in a tag, an attribute or a stylesheet, a hidden footer…)
    every message with that key is checked in full. At most `capacity` keys are tried.
    """

    def __init__(self, assemble: Callable[[str, str], str], capacity: int = 64) -> None:
        self.assemble = assemble  # (body, footer) -> the whole HTML, as the message has it
        self.capacity = capacity
        self.reused = 0
        self._visible: dict[str, bool] = {}

    def problems(self, body: str, footer: str, html: str, required_texts: list[str], unsubscribe_url: str,
                 values: Iterable[str], *, reuse: bool = True) -> list[str]:
        """check_footer_html(html, …), where html = assemble(body, footer): the template's output with
        the footer added; `values` are the recipient's HTML-escaped strings that may appear in it.
        reuse=False checks this message in full (its footer has a value that is not plain text)."""
        key = self._mask(body, values) if reuse else None
        known = self._visible.get(key) if key is not None else False
        if known:
            self.reused += 1
            return []
        problems = check_footer_html(html, required_texts, unsubscribe_url)
        if known is None and key is not None and len(self._visible) < self.capacity:
            self._visible[key] = not problems and _marks_between_tags(key) and \
                _same_tree(html, self.assemble(key, footer), key.count(_MARK))
        return problems

    @staticmethod
    def _mask(body: str, values: Iterable[str]) -> str | None:
        if _MARK in body:
            return None
        for value in sorted({v for v in values if len(v) >= 3 and text_safe(v)}, key=lambda v: (-len(v), v)):
            body = body.replace(value, _MARK)
        return body


def _marks_between_tags(masked: str) -> bool:
    """Is every mark where the parser reads plain text, whatever the value? The nearest "<" or
    ">" before it must be a ">" (or none). Right after "<", "</", "<!" or inside a tag, a value
    starting with a letter or "!" would open markup (`<{{ v }}>` with v = "textarea") where the
    mark, which cannot start a name, reads as text: the same tree for the mark proves nothing."""
    at = masked.find(_MARK)
    while at != -1:
        if masked.rfind("<", 0, at) > masked.rfind(">", 0, at):
            return False
        at = masked.find(_MARK, at + 1)
    return True


def _same_tree(html: str, masked: str, marks: int) -> bool:
    """Do both documents parse to the same elements and attributes, with every mark of `masked`
    in a text node of an ordinary element, and text nodes blank in one only when blank in the other?"""
    try:
        real, probe = lxml.html.document_fromstring(html), lxml.html.document_fromstring(masked)
    except (ParserError, ValueError):
        return False
    found = 0
    for a, b in zip_longest(real.iter(), probe.iter()):
        if a is None or b is None or a.tag != b.tag or len(a) != len(b):
            return False
        if isinstance(a.tag, str):
            if dict(a.attrib) != dict(b.attrib):
                return False
        elif a.text != b.text:  # a comment or processing instruction
            return False
        for text_a, text_b, owner in ((a.text, b.text, a), (a.tail, b.tail, a.getparent())):
            if bool((text_a or "").strip(_BLANK)) != bool((text_b or "").strip(_BLANK)):
                return False
            count = (text_b or "").count(_MARK)
            if count:
                if owner is None or not isinstance(owner.tag, str) or owner.tag in _RAW_TEXT:
                    return False
                found += count
    return found == marks
