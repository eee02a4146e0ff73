"""The template's HTML, rebuilt so that nothing in it can reach the footer.

Detecting every way CSS can hide something is an arms race; instead the message is
built so the template has no way to touch the footer:

- the rendered HTML is parsed by an HTML5 parser (lexbor) and serialised again, so
  every element is closed and no comment, raw-text element or stray `</body>` can
  swallow what follows;
- the template's content goes into `<div id="mailer-content">`, and the footer is the
  last child of `<body>`, after it, never inside it;
- every selector of the template's stylesheets is scoped inside `#mailer-content`
  (`body` and `html` stand for the wrapper), so no rule can select the footer, and
  `body`'s own attributes and styles go to the wrapper;
- declarations are kept from an allowlist of what email clients render; what can
  paint outside its own box or move it (positioning, offsets, transforms, negative
  margins, shadows, outlines, filters, masks, blending, generated content, pseudo-
  elements, at-rules other than @media/@supports/@font-face) is left out, as Gmail
  does, and said in a note; and the wrapper clips its painting (`contain: paint`), so
  nothing in it can cover the footer in a browser that honours it;
- elements that pull content out of the document or the parser's normal rules
  (frames, svg, dialogs, popovers, templates, plaintext, scripts), an id of mailer's,
  a link offering to unsubscribe elsewhere, and a part Gmail would clip are refused.

`isolate()` returns the rebuilt document's parts, the problems that make the template
unusable (each naming the element or link and the fix) and the notes.
"""
from __future__ import annotations

import html as html_lib
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import markupsafe
import tinycss2
from selectolax.lexbor import LexborHTMLParser, LexborNode

CONTENT_ID = "mailer-content"
FOOTER_ID = "mailer-footer"
#: Gmail clips a message's HTML past about 102 KB: the footer, last, would be cut off.
HTML_SIZE_LIMIT = 100 * 1024

# --------------------------------------------------------------------------- elements

#: What email clients render and what stays in its own box.
ALLOWED_ELEMENTS = frozenset("""
a abbr address article aside b bdi bdo big blockquote br caption center cite code col colgroup dd del dfn
div dl dt em figcaption figure font footer h1 h2 h3 h4 h5 h6 header hr i img ins kbd li main mark nav ol
p picture pre q s samp section small source span strike strong sub summary sup table tbody td tfoot th
thead time tr tt u ul var wbr details
""".split())
#: Dropped with their content: they never show in the body (the head's own parts).
DROPPED_ELEMENTS = frozenset({"title", "meta", "base"})
#: Where a template's stylesheets are (collected, then rebuilt).
STYLE = "style"
#: Refused, with the reason said to the author.
REFUSED_ELEMENTS = {
    "script": "scripts do not run in email", "noscript": "scripts do not run in email",
    "iframe": "frames can cover the message", "frame": "frames can cover the message",
    "frameset": "frames replace the message", "noframes": "frames replace the message",
    "object": "embedded objects can cover the message", "embed": "embedded objects can cover the message",
    "svg": "svg can draw over the message", "math": "MathML is not rendered by email clients",
    "canvas": "canvas is not rendered by email clients", "video": "video is not rendered by email clients",
    "audio": "audio is not rendered by email clients", "dialog": "dialogs show above the message",
    "template": "template contents (and shadow roots) are not part of the message",
    "slot": "shadow DOM is not part of the message", "plaintext": "it turns the rest of the message into text",
    "xmp": "it is not parsed like the rest of the message", "listing": "it is not parsed like the rest",
    "noembed": "it is not parsed like the rest of the message", "textarea": "form controls are not for email",
    "form": "forms are not for email", "input": "form controls are not for email",
    "button": "form controls are not for email", "select": "form controls are not for email",
    "portal": "it shows another page", "marquee": "it moves content around",
}
#: Links to these font services may stay: they only bring web fonts.
FONT_SERVICES = ("fonts.googleapis.com", "fonts.bunny.net", "use.typekit.net", "fonts.cdnfonts.com",
                 "use.fontawesome.com", "fast.fonts.net", "cloud.typography.com", "rsms.me")

#: Attributes that take the element out of the page (top layer) or hide it from the parser.
REFUSED_ATTRIBUTES = {"popover": "a popover shows above the message",
                      "shadowrootmode": "a shadow root is not part of the message",
                      "shadowroot": "a shadow root is not part of the message"}

# --------------------------------------------------------------------------- CSS

#: Properties kept: what Gmail and Outlook keep, for a layout inside its own box.
ALLOWED_PROPERTIES = frozenset("""
background background-color background-image background-position background-repeat background-size
border border-top border-right border-bottom border-left border-color border-style border-width
border-top-color border-right-color border-bottom-color border-left-color border-top-style
border-right-style border-bottom-style border-left-style border-top-width border-right-width
border-bottom-width border-left-width border-radius border-top-left-radius border-top-right-radius
border-bottom-left-radius border-bottom-right-radius border-collapse border-spacing
color direction display float clear font font-family font-size font-style font-variant font-weight
height max-height min-height width max-width min-width line-height letter-spacing list-style
list-style-type list-style-position margin margin-top margin-right margin-bottom margin-left
padding padding-top padding-right padding-bottom padding-left table-layout text-align
text-decoration text-decoration-color text-decoration-line text-decoration-style text-indent
text-transform vertical-align white-space word-break word-spacing word-wrap overflow-wrap
overflow overflow-x overflow-y opacity visibility caption-side empty-cells hyphens box-sizing
object-fit font-feature-settings text-underline-offset text-rendering
-webkit-text-size-adjust -ms-text-size-adjust -webkit-font-smoothing -moz-osx-font-smoothing
-ms-interpolation-mode
""".split())
#: Refused: they paint outside the element's box, or move it, or reach other elements.
REFUSED_PROPERTIES = {
    "position": "positioning takes an element out of its place", "top": "offsets move an element",
    "right": "offsets move an element", "bottom": "offsets move an element", "left": "offsets move an element",
    "inset": "offsets move an element", "transform": "transforms move and shrink", "translate": "it moves",
    "rotate": "it moves", "scale": "it shrinks", "zoom": "it shrinks", "filter": "filters change what shows",
    "backdrop-filter": "it changes what shows behind", "mix-blend-mode": "blending changes what shows behind",
    "mask": "masks hide", "mask-image": "masks hide", "-webkit-mask": "masks hide",
    "-webkit-mask-image": "masks hide", "clip-path": "it clips", "clip": "it clips",
    "box-shadow": "a shadow paints outside the box", "text-shadow": "a shadow paints outside the box",
    "outline": "an outline paints outside the box", "outline-offset": "an outline paints outside the box",
    "outline-width": "an outline paints outside the box", "content": "generated content",
    "z-index": "stacking order", "contain": "containment", "content-visibility": "it hides",
    "animation": "animations", "transition": "transitions", "will-change": "it changes stacking",
    "isolation": "it changes blending", "perspective": "3D transforms", "offset-path": "it moves",
    "anchor-name": "anchors move elements", "position-anchor": "anchors move elements",
}
#: Ignored (dropped with a note): vendor extensions email tools write, harmless in a box.
_IGNORED_PREFIXES = ("mso-", "-moz-", "-webkit-", "-ms-", "-o-")

_NEGATIVE = re.compile(r"(?<![\w.])-\s*(?:\d|\.\d)")
#: Pseudo-elements select what the footer's inline styles cannot protect; refused.
_PSEUDO_ELEMENT = re.compile(r"::|:(before|after|first-line|first-letter|selection|marker|backdrop)\b",
                             re.IGNORECASE)
_ROOTS = re.compile(r"^\s*(html|body|:root)\b", re.IGNORECASE)
_ROOTS_ANYWHERE = re.compile(r"(?<![\w-])(html|body|:root)(?![\w-])", re.IGNORECASE)

# --------------------------------------------------------------------------- unsubscribe links

_UNSUBSCRIBE_WORDS = re.compile(
    r"unsubscri|opt[\s-]?out|desabonn|desinscri|se desabonner|abmelden|darse de baja|cancella", re.IGNORECASE)


#: Letters of other scripts that read as Latin ones, and characters that reorder or hide text.
_LOOKALIKES = str.maketrans({
    **dict(zip("аеорсухіјѕԁԛԝһӏАВЕКМНОРСТХІЈЅ", "aeopcyxijsdqwhlABEKMHOPCTXIJS", strict=True)),
    **dict(zip("αοτυνεικρχΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "aotuveikpxABEZHIKMNOPTYX", strict=True)),
    **{c: None for c in "\u200b\u200c\u200d\u2060\ufeff\u00ad\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"},
})


_HAS_LOOKALIKE = re.compile("[" + re.escape("".join(chr(c) for c in _LOOKALIKES)) + "]")


@lru_cache(maxsize=4096)  # the same link texts come back in every message of a run
def says_unsubscribe(text: str) -> bool:
    """Does this text offer to unsubscribe, as a person reads it: accents, case, lookalike letters of
    other scripts, invisible characters and right-to-left reversal (bdo, U+202E) ignored?"""
    if text.isascii():  # nothing to fold: the common case, at a tenth of the cost
        folded = text
    else:
        if _HAS_LOOKALIKE.search(text):  # str.translate with a table is slow on a long paragraph
            text = text.translate(_LOOKALIKES)
        folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return bool(_UNSUBSCRIBE_WORDS.search(folded) or _UNSUBSCRIBE_WORDS.search(folded[::-1]))


# --------------------------------------------------------------------------- result


@dataclass
class Isolated:
    """The template's part of the message, rebuilt."""

    #: blank space (px) the elements that show nothing have taken so far (see BLANK_HEIGHT_LIMIT)
    blank_height: float = 0.0
    style: str = ""          # its stylesheets, scoped inside #mailer-content
    wrapper_attributes: str = ""  # body's attributes, for the wrapper (already escaped)
    content: str = ""        # the body's content, re-serialised
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: what each link says to a reader, and its text glued to the word pieces beside it
    link_words: list[str] = field(default_factory=list)

    def around_footer(self, lang: str) -> tuple[str, str]:
        """The document before the footer and after it: the footer goes between, last in <body>."""
        head = f"<style>{self.style}</style>" if self.style else ""
        return ("<!DOCTYPE html>\n"
                f'<html lang="{html_lib.escape(lang)}"><head><meta charset="utf-8">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"{head}</head>"
                '<body style="margin:0;padding:0;background-color:#ffffff;">'
                f'<div id="{CONTENT_ID}"{self.wrapper_attributes}>{self.content}</div>',
                "</body></html>\n")


class TooCostly(Exception):
    """Markup the HTML parser would spend minutes or gigabytes on (it cannot be interrupted)."""


#: Elements nested deeper than this are refused: the parser's scope checks walk the open elements
#: for every tag (32,000 nested <div> took lexbor 25 s in one call; Chromium stops nesting at 512).
MAX_DEPTH = 1000
#: Formatting elements (<b>, <font>, <a>, …) left open are cloned by the parser each time a block
#: closes them and text follows ("reconstruct the active formatting elements"): 10,000 open <b a=N>
#: and 2,000 <p>x, 90 KB of markup, made 20 million elements and exhausted the memory.
MAX_CLONES = 100_000
#: Markup with fewer tags than this cannot reach either limit: it is parsed without the estimate.
_FEW_TAGS = 1000

_FORMATTING = frozenset("a b big code em font i nobr s small strike strong tt u".split())
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr keygen".split())
_CLOSES_P = frozenset("""address article aside blockquote center details dialog dir div dl fieldset figcaption
figure footer header hgroup main menu nav ol p section summary ul h1 h2 h3 h4 h5 h6 pre listing form table hr
xmp""".split())
_SAME_CLOSES = {"li": ("li",), "dd": ("dd", "dt"), "dt": ("dd", "dt"), "td": ("td", "th"), "th": ("td", "th"),
                "tr": ("tr",), "option": ("option",)}
#: Start tags before which the parser does not clone the open formatting elements (blocks, table parts).
_NO_RECONSTRUCT = frozenset("li dd dt tr td th tbody thead tfoot caption colgroup html head body style".split())
_TAG_AND_TEXT = re.compile(r"<(/?)([A-Za-z][^\s/>]*)([^>]*)>([^<]*)")


#: Attributes in one tag past this are refused: lexbor compares each with the ones before it
#: (duplicates are dropped), so 40,000 attributes (270 KB) took 36 s in one call.
MAX_ATTRIBUTES = 1000
#: Markup shorter than this cannot hold MAX_ATTRIBUTES attributes in one tag worth worrying about.
_FEW_ATTRIBUTE_CHARACTERS = 2 * MAX_ATTRIBUTES
#: A start tag as the tokenizer reads it: quotes open a value only after "=" (linear: each
#: alternative starts with a different character, and nothing follows the repetition).
_START_TAG = re.compile(r"""<[A-Za-z](?:[^>=]|=\s*"[^"]*"|=\s*'[^']*'|=)*""")
_QUOTED_VALUE = re.compile(r"""=\s*(?:"[^"]*"|'[^']*')""")
_ATTRIBUTE_NAME = re.compile(r"""[^\s/=]+""")


def _attribute_cost(html: str) -> None:
    for tag in _START_TAG.finditer(html):
        if tag.end() - tag.start() <= _FEW_ATTRIBUTE_CHARACTERS:
            continue
        names = len(_ATTRIBUTE_NAME.findall(_QUOTED_VALUE.sub("= ", tag.group())))
        if names > MAX_ATTRIBUTES:
            raise TooCostly(f"one of its tags has more than {MAX_ATTRIBUTES:,} attributes: the HTML parser would "
                            "take minutes on it")


def _parse_cost(html: str) -> None:
    """Raise TooCostly when the markup nests deeper than MAX_DEPTH or would make the parser clone
    more than MAX_CLONES formatting elements. An estimate that follows the HTML5 tree builder's
    main rules (open elements, implied ends of <p>, <li>, cells; the active formatting elements
    with their limit of three alike); it runs in Python, where the time budget can stop it."""
    if len(html) > _FEW_ATTRIBUTE_CHARACTERS:
        _attribute_cost(html)
    if html.count("<") < _FEW_TAGS:
        return
    stack: list[list[Any]] = []  # [name, its formatting entry or None]
    active: list[list[Any]] = []  # [name, attributes, open]
    detached = clones = 0

    def pop_to(index: int) -> None:
        nonlocal detached
        for _name, entry in stack[index + 1:]:
            if entry is not None and entry[2]:
                entry[2] = False
                detached += 1
        del stack[index + 1:]
        name, entry = stack.pop()
        if entry is not None:
            if entry[2]:
                active.remove(entry)
            else:
                detached -= 1

    def reconstruct() -> None:
        nonlocal detached, clones
        if not detached:
            return
        clones += detached
        if clones > MAX_CLONES:
            raise TooCostly("its markup leaves formatting elements (<b>, <font>, <a>, …) open across blocks: "
                            f"the HTML parser would copy them more than {MAX_CLONES:,} times")
        for entry in active:
            if not entry[2]:
                entry[2] = True
                stack.append([entry[0], entry])
        detached = 0

    def last(names: tuple[str, ...] | str) -> int:
        for index in range(len(stack) - 1, -1, -1):
            if stack[index][0] in names:
                return index
        return -1

    for match in _TAG_AND_TEXT.finditer(html):
        closing, name, attributes, text = match.group(1), match.group(2).lower(), match.group(3), match.group(4)
        if closing:
            at = last(name)
            if at >= 0:
                pop_to(at)
            elif name in _FORMATTING:
                for entry in reversed(active):
                    if entry[0] == name:
                        active.remove(entry)
                        detached -= 0 if entry[2] else 1
                        break
        elif name in _VOID:
            reconstruct()
        else:
            if name in _CLOSES_P and (at := last("p")) >= 0:
                pop_to(at)
            elif name in _SAME_CLOSES and (at := last(_SAME_CLOSES[name])) >= 0:
                pop_to(at)
            if name not in _CLOSES_P and name not in _NO_RECONSTRUCT:
                reconstruct()
            entry = None
            if name in _FORMATTING:
                alike = [e for e in active if e[0] == name and e[1] == attributes]
                if len(alike) >= 3:  # the "Noah's Ark" clause: the earliest of them goes
                    active.remove(alike[0])
                    if not alike[0][2]:
                        detached -= 1
                    else:
                        alike[0][2] = False  # still open, no longer cloned
                entry = [name, attributes, True]
                active.append(entry)
            stack.append([name, entry])
            if len(stack) > MAX_DEPTH:
                raise TooCostly(f"its elements are nested more than {MAX_DEPTH:,} deep (unclosed tags?): the HTML "
                                "parser would take minutes on it, and browsers stop nesting at 512")
        if text.strip():
            reconstruct()


check_parse_cost = _parse_cost


def isolate(html: str, unsubscribe_url: str) -> Isolated:
    """Parse the template's output and rebuild it: see the module's docstring."""
    _parse_cost(html)
    result = Isolated()
    tree = LexborHTMLParser(html.encode("utf-8"))  # bytes: half the parser's fixed cost of a str
    styles: list[str] = []
    conditional = False
    body = tree.body
    for node in list(tree.root.traverse(include_text=False)) if tree.root is not None else []:
        if node.is_comment_node:
            # Outlook renders what a conditional comment holds, unchecked: nothing of it stays.
            if "[if" in (node.comment_content or ""):
                conditional = True
            node.decompose()
            continue
        if not node.is_element_node:
            continue
        tag = (node.tag or "").lower()
        if tag in ("html", "head", "body"):
            continue
        if tag == STYLE:
            styles.append(node.text(deep=True))
            node.decompose()
            continue
        if tag == "link":
            _link(node, result)
            node.decompose()
            continue
        if tag in DROPPED_ELEMENTS:
            node.decompose()
            continue
        if tag in REFUSED_ELEMENTS:
            result.problems.append(f"<{tag}> is not allowed: {REFUSED_ELEMENTS[tag]}; remove it")
            continue
        if tag not in ALLOWED_ELEMENTS:
            result.problems.append(f"<{tag}> is not an element email clients show; use a table, div, p or span")
            continue
        _attributes(node, tag, unsubscribe_url, result)
        if tag == "pre" and node.first_child is not None:
            # The parser drops one line break right after <pre>; the serialiser does not put it back,
            # so a first line beginning with one would lose it. One more is always dropped again.
            node.first_child.insert_before("\n")
    if conditional:
        result.notes.append("Outlook conditional comments (<!--[if mso]>) were left out: what they hold is shown "
                            "by Outlook alone, unchecked; the layout falls back to what other clients show")
    if len(_LINE_BREAK.findall(html)) > LINE_BREAK_RUN:
        _shorten_line_break_runs(tree, result)
    if len(_BLOCK_START.findall(html)) > LINE_BREAK_RUN:
        _shorten_blank_block_runs(tree, result)
    if _NEWLINES.search(html) or "&#" in html:
        _shorten_newline_runs(tree, result)
    for css in styles:
        result.style += _stylesheet(css, tree, result)
    if body is not None:
        _body_to_wrapper(body, result)
        result.content = body.inner_html or ""
    return result


#: More line breaks in a row than this only make a blank stretch above the footer.
LINE_BREAK_RUN = 4
_LINE_BREAK = re.compile(r"<br\b", re.IGNORECASE)


def _shorten_line_break_runs(tree: LexborHTMLParser, result: Isolated) -> None:
    # Runs are measured on the tree as parsed (each <br> looks back past blank text to the one
    # before it: a step or two), and only then are the extra ones removed.
    runs: dict[int, int] = {}
    extra = []
    for br in tree.css("br"):
        before = br.prev
        while before is not None and before.is_text_node and not (before.text_content or "").strip():
            before = before.prev
        run = runs.get(before.mem_id, 0) + 1 if before is not None and before.tag == "br" else 1
        runs[br.mem_id] = run
        if run > LINE_BREAK_RUN:
            extra.append(br)
    for br in extra:
        br.decompose()
    removed = len(extra)
    if removed:
        result.notes.append(f"{removed} line breaks past {LINE_BREAK_RUN} in a row were left out: they would push "
                            "the footer out of sight")


_BLOCKS = "p, div, table, center, h1, h2, h3, h4, h5, h6, section, blockquote, pre, ul, ol, li, hr"
_BLOCK_START = re.compile(r"<(?:p|div|table|center|h[1-6]|section|blockquote|pre|ul|ol|li|hr)\b", re.IGNORECASE)
_NEWLINES = re.compile(r"(?:\n[^\S\n]*){5,}")
_BLANK_CHARACTERS = " \t\n\r\f\xa0" + "\u200b\u200c\u200d\u2060\ufeff\u3000\u2002\u2003\u2009"


def _blank(node: LexborNode) -> bool:
    return not node.text(deep=True).strip(_BLANK_CHARACTERS) and node.css_first("img, picture") is None \
        and node.tag != "img"


def _shorten_blank_block_runs(tree: LexborHTMLParser, result: Isolated) -> None:
    """Blocks showing nothing (empty paragraphs, spacer divs and tables) stacked one after the other
    only make a blank stretch above the footer: more than LINE_BREAK_RUN in a row are left out."""
    runs: dict[int, int] = {}
    extra = []
    for block in tree.css(_BLOCKS):
        if not _blank(block):
            continue
        before = block.prev
        while before is not None and before.is_text_node and not (before.text_content or "").strip(
                _BLANK_CHARACTERS):
            before = before.prev
        run = runs.get(before.mem_id, 0) + 1 if before is not None and before.mem_id in runs else 1
        runs[block.mem_id] = run
        if run > LINE_BREAK_RUN:
            extra.append(block)
    for block in extra:
        block.decompose()
    if extra:
        result.notes.append(f"{len(extra)} empty blocks past {LINE_BREAK_RUN} in a row were left out: they would "
                            "push the footer out of sight")


def _shorten_newline_runs(tree: LexborHTMLParser, result: Isolated) -> None:
    """More than LINE_BREAK_RUN line breaks in a row in text (shown as such in <pre> or with
    white-space: pre) are shortened."""
    shortened = 0
    for node in list(tree.root.traverse(include_text=True)) if tree.root is not None else []:
        if node.is_text_node:
            text = node.text_content or ""
            if _NEWLINES.search(text):
                node.replace_with(_NEWLINES.sub("\n" * LINE_BREAK_RUN, text))
                shortened += 1
    if shortened:
        result.notes.append(f"runs of more than {LINE_BREAK_RUN} line breaks in text were shortened: they would "
                            "push the footer out of sight")


def _link(node: LexborNode, result: Isolated) -> None:
    href = node.attributes.get("href") or ""
    rel = (node.attributes.get("rel") or "").lower()
    if "stylesheet" in rel and _font_service(href):
        result.notes.append(f"web font stylesheet {href} is left out (the text falls back to its other fonts)")
    elif "stylesheet" in rel:
        result.notes.append(f"<link rel=stylesheet href={href!r}> was left out: only web font services are "
                            "linked; put the styles in a <style> block")


def _font_service(url: str) -> bool:
    host = (urlsplit(url.strip().strip("'\"")).hostname or "").lower()
    return any(host == s or host.endswith("." + s) for s in FONT_SERVICES)


def _attributes(node: LexborNode, tag: str, unsubscribe_url: str, result: Isolated) -> None:
    attributes = node.attributes
    for name, value in list(attributes.items()):
        lowered = name.lower()
        if lowered in REFUSED_ATTRIBUTES:
            result.problems.append(f"<{tag} {name}> is not allowed: {REFUSED_ATTRIBUTES[lowered]}")
        elif lowered.startswith("on"):
            del node.attrs[name]  # event handlers: no script runs in email
        elif lowered == "id" and (value or "").strip().lower().startswith("mailer-"):
            result.problems.append(f"<{tag} id={value!r}>: ids starting with mailer- belong to mailer's footer; "
                                   "rename it")
        elif lowered in ("height", "width", "cellpadding", "cellspacing", "vspace", "hspace", "border", "size") and \
                value and _attribute_length(value) > LENGTH_LIMIT:
            del node.attrs[name]
            result.notes.append(f"<{tag} {name}={value!r}> was left out: over {LENGTH_LIMIT}px, it would push the "
                                "footer out of sight")
        elif lowered == "style" and value:
            kept = _declarations(value, f"<{tag} style>", result)
            if kept:
                node.attrs[name] = kept
            else:
                del node.attrs[name]
    if tag in ("img", "source"):
        _images_shown(node, tag, result)
    _spend_blank_height(node, tag, result)
    if tag == "a":
        words, glued = _link_words(node), _glued_word(node)
        result.link_words += (words, glued)
        if says_unsubscribe(words) or says_unsubscribe(glued):
            href = html_lib.unescape(attributes.get("href") or "").strip()
            if href != unsubscribe_url:
                shown = words.strip() if says_unsubscribe(words) else glued
                result.problems.append(f"a link offering to unsubscribe ({shown[:40]!r}) goes to "
                                       f"{href[:80] or 'nowhere'}: only the footer's link unsubscribes; "
                                       "use href=\"{{ unsubscribe_url }}\" or remove the link")


#: The wrapper's own style, last so that it wins: a block that contains its floats and clips
#: whatever its content paints, so nothing of the template can cover the footer after it.
_WRAPPER_STYLE = ("display:flow-root !important;contain:paint !important;isolation:isolate !important;"
                  "position:relative !important;margin:0 !important")
_BODY_ATTRIBUTES = ("bgcolor", "background", "class", "dir", "lang", "text", "link", "vlink", "alink")


#: The tallest an image is shown: its height follows its width by its own proportions (a 1x60 white
#: picture at width:100% stood 36,000px tall), so each is held to this, whatever the stylesheet says.
IMAGE_HEIGHT_LIMIT = LENGTH_LIMIT = 1500
#: What an image is taken to show, for the height of what holds it, when it does not say its height.
IMAGE_ALLOWANCE = 600
_URL_NOISE = re.compile(r"[\x00-\x20\x7f]+")


def _images_shown(node: LexborNode, tag: str, result: Isolated) -> None:
    """Images come from the web, as mail clients show them: Gmail and Outlook do not show data:
    images, and one a template carries could be any height of blank. Each is held to
    IMAGE_HEIGHT_LIMIT (an inline !important declaration, which no stylesheet rule overrides)."""
    for name in ("src", "srcset"):
        value = node.attributes.get(name)
        if value is not None and _URL_NOISE.sub("", html_lib.unescape(value)).lower().startswith("data:"):
            del node.attrs[name]
            result.notes.append(f"<{tag} {name}=\"data:...\"> was left out: mail clients such as Gmail and Outlook do "
                                "not show images carried in the message; link to the image on your web server")
    if tag == "img":
        style = (node.attributes.get("style") or "").rstrip().rstrip(";")
        node.attrs["style"] = f"{style};max-height:{IMAGE_HEIGHT_LIMIT}px !important" if style else \
            f"max-height:{IMAGE_HEIGHT_LIMIT}px !important"


def _image_allowance(node: LexborNode) -> float:
    """The height the images inside `node` may account for: each one's stated height, or
    IMAGE_ALLOWANCE when it does not say."""
    total = 0.0
    for image in node.css("img") if node.tag != "img" else [node]:
        stated = _attribute_length(image.attributes.get("height") or "")
        match = re.search(r"(?:^|;)\s*height\s*:\s*(\d+(?:\.\d+)?)px", image.attributes.get("style") or "", re.I)
        if match:
            stated = float(match.group(1))
        total += min(stated, IMAGE_HEIGHT_LIMIT) if stated else IMAGE_ALLOWANCE
    return total


def _shows_little(node: LexborNode, height: float) -> bool:
    """True when `node` is tall for what it shows: its text at PX_PER_CHARACTER, its images at
    their stated heights."""
    shown = len(node.text(deep=True).strip(_BLANK_CHARACTERS)) * PX_PER_CHARACTER
    return shown < height and shown + _image_allowance(node) < height


def _attribute_length(value: str) -> float:
    match = re.match(r"\s*(\d+(?:\.\d+)?)", value)
    return float(match.group(1)) if match and not value.strip().endswith("%") else 0.0


#: The height all elements that show nothing (spacers), or little for their height, may take in
#: one message, together.
BLANK_HEIGHT_LIMIT = 2000
#: An element is tall for what it shows past this height per visible character ("." in a 1,400px
#: paragraph, sixty times over, pushed the footer 84,000px down): its height counts as a spacer's.
PX_PER_CHARACTER = 100
_VERTICAL = re.compile(r"(?:^|;)\s*(height|min-height|padding(?:-top|-bottom)?|margin(?:-top|-bottom)?|"
                       r"line-height|border(?:-top|-bottom)?(?:-width)?)\s*:\s*([^;]*)", re.IGNORECASE)


def _vertical_px(style: str) -> float:
    """The vertical space (px, roughly) an inline style gives an element."""
    total = 0.0
    for name, value in _VERTICAL.findall(style):
        lengths = [float(v) * (FONT_SIZE_LIMIT if u.lower() in _FONT_RELATIVE else _PX_PER_UNIT.get(u.lower(), 1))
                   for v, u in re.findall(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", value)]
        if not lengths:
            continue
        if name.lower() in ("padding", "margin", "border", "border-width") and len(lengths) in (2, 3, 4):
            total += lengths[0] + lengths[2 if len(lengths) > 2 else 0]
        else:
            total += lengths[0] * (2 if name.lower() in ("padding", "margin", "border", "border-width") else 1)
    return total


def _spend_blank_height(node: LexborNode, tag: str, result: Isolated) -> None:
    """One element's inline heights and vertical spacing together stay within LENGTH_LIMIT, and
    elements that show nothing (spacers), or little for their height (PX_PER_CHARACTER), within
    BLANK_HEIGHT_LIMIT in all; past either, they are
    left out (lengths each under the limit, summed on one element or stacked as spacers)."""
    attributes = node.attributes
    style, height = attributes.get("style") or "", attributes.get("height") or ""
    if not (style or height) or tag in ("img", "tr", "tbody", "thead", "tfoot"):
        return
    spent = _vertical_px(style) + _attribute_length(height)
    if spent <= LENGTH_LIMIT and not _shows_little(node, spent):
        return  # an element with content for its height, its spacing within one length's limit
    if spent <= LENGTH_LIMIT and result.blank_height + spent <= BLANK_HEIGHT_LIMIT:
        result.blank_height += spent
        return
    if height:
        del node.attrs["height"]
    if style:
        kept = ";".join(d for d in style.split(";") if not _VERTICAL.match(";" + d))
        if kept:
            node.attrs["style"] = kept
        else:
            del node.attrs["style"]
    result.notes.append(f"<{tag}>: its height and vertical spacing were left out: over {LENGTH_LIMIT}px for one "
                        f"element, or past {BLANK_HEIGHT_LIMIT}px of empty elements in the message, they would push "
                        "the footer out of sight")


def _glued_word(node: LexborNode) -> str:
    """The link's text with the word pieces written right against it (no space between), as a
    person reads them: "Unsub<a>scribe</a>" or "<a>Unsub</a><a>scribe</a>" both read
    "Unsubscribe"."""
    before = node.prev.text(deep=True) if node.prev is not None else ""
    after = node.next.text(deep=True) if node.next is not None else ""
    text = node.text(deep=True)
    head = before.split()[-1] if text[:1].strip() and before[-1:].strip() else ""
    tail = after.split()[0] if text[-1:].strip() and after[:1].strip() else ""
    return head + text.strip() + tail


def _link_words(node: LexborNode) -> str:
    """What a link says to a reader: its text, title and aria-label, and its images' alt and title."""
    words = [node.text(deep=True), node.attributes.get("title") or "", node.attributes.get("aria-label") or ""]
    for image in node.css("img"):
        words += [image.attributes.get("alt") or "", image.attributes.get("title") or ""]
    return " ".join(words)


def _body_to_wrapper(body: LexborNode, result: Isolated) -> None:
    """body's presentational attributes and style apply to the template's box, not the footer's."""
    attributes = body.attributes
    style = _declarations(attributes.get("style") or "", "<body style>", result)
    parts = [f' {name.lower()}="{html_lib.escape(value, quote=True)}"' for name, value in attributes.items()
             if name.lower() in _BODY_ATTRIBUTES and value]
    parts.append(f' style="{html_lib.escape(";".join(p for p in (style, _WRAPPER_STYLE) if p), quote=True)}"')
    result.wrapper_attributes = "".join(parts)


# --------------------------------------------------------------------------- CSS


def _declarations(text: str, where: str, result: Isolated) -> str:
    kept, stripped = _clean_declarations(text, where)
    result.notes.extend(stripped)
    return kept


@lru_cache(maxsize=4096)
def _clean_declarations(text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """(the allowed declarations, re-serialised; what was left out, said). Cached: a campaign's
    messages repeat the same style attributes. Like Gmail, what is not allowed is dropped, not
    refused: the layout keeps working, and nothing it keeps can leave its own box."""
    kept: list[str] = []
    problems: list[str] = []
    for item in tinycss2.parse_blocks_contents(text, skip_comments=True, skip_whitespace=True):
        if item.type == "declaration":
            name = item.lower_name
            value = tinycss2.serialize(item.value).strip()
            problem = _declaration_problem(name, value) or _length_problem(name, item.value)
            if problem:
                problems.append(f"{where}: {name}: {value} was left out: {problem}")
            elif name in ALLOWED_PROPERTIES:
                kept.append(f"{name}:{value}{' !important' if item.important else ''}")
        elif item.type == "qualified-rule" or item.type == "at-rule":
            problems.append(f"{where}: a nested rule was left out; write each rule at the top level")
        elif item.type == "error":
            continue
    return ";".join(kept), tuple(problems)


#: Lengths past this (in px) push the footer out of sight below a blank stretch (LENGTH_LIMIT,
#: defined with IMAGE_HEIGHT_LIMIT above).
_PX_PER_UNIT = {"px": 1, "pt": 4 / 3, "pc": 16, "in": 96, "cm": 37.8, "mm": 3.78, "q": 0.945, "em": 16, "rem": 16,
                "ex": 8, "ch": 8, "lh": 24, "rlh": 24, "vh": 9, "svh": 9, "lvh": 9, "dvh": 9, "vmax": 9,
                "vw": 6, "svw": 6, "lvw": 6, "dvw": 6, "vmin": 6, "vb": 9, "vi": 6, "cqh": 9, "cqw": 6}
_SPACING = ("height", "min-height", "max-height", "padding", "margin", "line-height", "font", "border",
            "letter-spacing", "word-spacing", "text-indent", "width", "min-width", "vertical-align")
#: The largest font size kept; lengths relative to the font are counted at this size, so that
#: no font-relative length can grow past LENGTH_LIMIT whatever the font size.
FONT_SIZE_LIMIT = 200
_FONT_RELATIVE = frozenset({"em", "ex", "ch", "lh", "rlh", "cap", "ic", "rem", "rex", "rch", "ric", "rcap"})


def _length_problem(name: str, tokens: list[Any]) -> str | None:
    """A length so large it makes a blank stretch between the message and the footer."""
    if not name.startswith(_SPACING) or name == "font-family":
        return None
    limit = FONT_SIZE_LIMIT if name in ("font-size", "font") else LENGTH_LIMIT
    for token in tokens:
        if token.type == "function" and token.lower_name not in ("rgb", "rgba", "hsl", "hsla"):
            return f"{token.lower_name}() is not used for sizes; write the length itself"
        if name == "vertical-align" and token.type in ("dimension", "number", "percentage"):
            return "only keywords (top, middle, bottom, baseline) are used"
        if token.type == "percentage" and name != "font" and not name.startswith(("width", "min-width",
                                                                                   "max-width", "height")):
            if abs(float(token.value)) > 100:
                return "over 100%, it would push the footer out of sight"
            continue
        if token.type == "dimension":
            unit = token.lower_unit
            px = float(token.value) * (FONT_SIZE_LIMIT if unit in _FONT_RELATIVE else _PX_PER_UNIT.get(unit, 16))
        elif token.type == "number" and name in ("line-height", "font"):
            px = float(token.value) * FONT_SIZE_LIMIT if name == "line-height" else 0
        elif token.type == "number" and token.value and name != "font-weight":
            px = float(token.value)
        else:
            continue
        if abs(px) > limit:
            return f"over {limit}px, it would push the footer out of sight"
    return None


def _declaration_problem(name: str, value: str) -> str | None:
    if name == "position" and value.lower().strip() in ("static", "relative"):
        return None
    if name in ("top", "right", "bottom", "left", "inset") and value.strip().lower() in ("0", "0px", "auto"):
        return None
    if name in REFUSED_PROPERTIES:
        return f"not allowed ({REFUSED_PROPERTIES[name]})"
    if name.startswith("--"):
        return "custom properties are not used; write the value itself"
    lowered = value.lower()
    if "var(" in lowered or "env(" in lowered or "attr(" in lowered:
        return "var(), env() and attr() are not used; write the value itself"
    if name.startswith(("margin", "padding", "text-indent", "letter-spacing", "word-spacing")) and \
            _NEGATIVE.search(value):
        return "negative values move content over its neighbours"
    if name == "display" and lowered.split()[:1] and lowered.split()[0] in ("contents",):
        return "display: contents is not allowed"
    if "expression(" in lowered or "javascript:" in lowered or "url(" in lowered and name not in (
            "background", "background-image"):
        return "not allowed here"
    return None


def _stylesheet(css: str, tree: LexborHTMLParser, result: Isolated) -> str:
    """The stylesheet scoped inside the wrapper; what cannot be kept is left out, said in notes.
    Its rules that make elements tall are charged, on the elements they apply to, to the same
    budget as inline styles (a class sizing empty blocks)."""
    text, stripped, notes, tall = _clean_stylesheet(css)
    result.notes.extend(stripped)
    result.notes.extend(notes)
    for selector, px in tall:
        _charge_rule(tree, selector, px, result)
    return text.replace("<", "\\3c ")  # a string holding </style> must not end the element


#: A rule giving an element this much vertical space or more is charged to the blank-space budget.
TALL_RULE = 200
_FLATTENED = ("height:auto !important;min-height:0 !important;padding-top:0 !important;padding-bottom:0 !important;"
              "margin-top:0 !important;margin-bottom:0 !important;line-height:normal !important;"
              "border-top-width:0 !important;border-bottom-width:0 !important")


def _charge_rule(tree: LexborHTMLParser, selector: str, px: float, result: Isolated) -> None:
    if tree.body is None or selector == f"#{CONTENT_ID}":
        return
    subject = _subject_compound(selector)
    if subject is None:
        return
    try:
        matched = tree.body.css(subject)
    except Exception:  # a selector lexbor does not know applies in no browser we judge by either
        return
    flattened = 0
    for node in matched:
        if node.tag in ("img", "body") or not _shows_little(node, px):
            continue
        if result.blank_height + px <= BLANK_HEIGHT_LIMIT:
            result.blank_height += px
            continue
        node.attrs["style"] = ";".join(p for p in ((node.attributes.get("style") or ""), _FLATTENED) if p)
        flattened += 1
    if flattened:
        result.notes.append(f"{flattened} empty elements sized by {selector!r} were flattened: past "
                            f"{BLANK_HEIGHT_LIMIT}px of empty elements in the message, they would push the footer "
                            "out of sight")


@lru_cache(maxsize=1024)
def _subject_compound(selector: str) -> str | None:
    """What the rule is charged to: the elements its last compound selector matches, without its
    pseudo-classes (more elements than the rule selects, never fewer). Lexbor matches combinators
    and :has()/:is()/:not() by trying every path, in one C call no timer can stop: `span div div div
    div div div div div p` over 60 nested divs ran for minutes. None: the wrapper itself."""
    tokens = tinycss2.parse_component_value_list(selector, skip_comments=True)
    start = 0
    for index, token in enumerate(tokens):
        if token.type == "whitespace" or token.type == "literal" and token.value in (">", "+", "~"):
            start = index + 1
    kept: list[Any] = []
    compound = tokens[start:]
    index = 0
    while index < len(compound):
        token = compound[index]
        if token.type == "literal" and token.value == ":":  # :hover, :not(…), ::x (refused before)
            index += 1
            while index < len(compound) and compound[index].type == "literal" and compound[index].value == ":":
                index += 1
            index += 1  # the pseudo-class's name or function
            continue
        kept.append(token)
        index += 1
    subject = tinycss2.serialize(kept).strip()
    if f"#{CONTENT_ID}" in subject:
        return None
    return subject or "*"


@lru_cache(maxsize=256)
def _clean_stylesheet(css: str) -> tuple[str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, float], ...]]:
    problems: list[str] = []
    notes: list[str] = []
    tall: list[tuple[str, float]] = []
    text = _rules(tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True), problems, notes, tall)
    return text, tuple(problems), tuple(notes), tuple(tall)


def _rules(rules: list[Any], problems: list[str], notes: list[str], tall: list[tuple[str, float]]) -> str:
    out: list[str] = []
    for rule in rules:
        if rule.type == "qualified-rule":
            selectors = _scoped_selectors(rule.prelude, problems)
            declarations = _declarations_of_rule(rule, selectors, problems)
            if selectors and declarations:
                out.append(f"{', '.join(selectors)}{{{declarations}}}")
                px = _vertical_px(declarations)
                if px >= TALL_RULE:
                    tall.extend((selector, px) for selector in selectors)
        elif rule.type == "at-rule":
            name = rule.lower_at_keyword
            prelude = tinycss2.serialize(rule.prelude).strip()
            if name in ("media", "supports"):
                inner = _rules(tinycss2.parse_rule_list(rule.content or [], skip_comments=True,
                                                        skip_whitespace=True), problems, notes, tall)
                if inner:
                    out.append(f"@{name} {prelude}{{{inner}}}")
            elif name == "import":
                if _font_service(_import_url(rule)):
                    notes.append(f"web font stylesheet {_import_url(rule)} is left out (the text falls back to "
                                 "its other fonts)")
                else:
                    problems.append(f"@import {prelude} was left out: only web font services are imported; put the "
                                    "styles in the <style> block")
            elif name == "font-face":
                family = _font_face_family(rule)
                if family.strip("'\" ").lower() in ("serif", "sans-serif", "monospace", "cursive", "fantasy",
                                                    "system-ui", "ui-sans-serif", "ui-serif"):
                    problems.append(f"@font-face for the generic family {family} was left out; name the web font")
                else:
                    out.append(f"@font-face{{{tinycss2.serialize(rule.content or []).strip()}}}")
            elif name in ("charset", "keyframes", "-webkit-keyframes", "page", "viewport", "-ms-viewport"):
                continue
            else:
                problems.append(f"@{name} was left out: use plain rules and @media")
    return "".join(out)


def _import_url(rule: object) -> str:
    for token in getattr(rule, "prelude", []):
        if token.type in ("url", "string"):
            return str(token.value)
        if token.type == "function" and token.lower_name == "url":
            return "".join(str(getattr(a, "value", "")) for a in token.arguments)
    return ""


def _font_face_family(rule: object) -> str:
    """The family the face is for: its last font-family, as browsers read it (the first let
    `font-family: Brand; font-family: "sans-serif"` through)."""
    family = ""
    for item in tinycss2.parse_blocks_contents(getattr(rule, "content", None) or [], skip_comments=True,
                                               skip_whitespace=True):
        if item.type == "declaration" and item.lower_name == "font-family":
            family = tinycss2.serialize(item.value).strip()
    return family


def _declarations_of_rule(rule: object, selectors: list[str], problems: list[str]) -> str:
    where = ", ".join(selectors) or tinycss2.serialize(getattr(rule, "prelude", [])).strip()
    kept, found = _clean_declarations(tinycss2.serialize(getattr(rule, "content", None) or []), f"rule {where}")
    problems.extend(found)
    return kept


def _scoped_selectors(prelude: list[Any], problems: list[str]) -> list[str]:
    """Each selector of the list, inside #mailer-content; html/body/:root stand for the wrapper."""
    scoped = []
    for selector in _split_selectors(prelude):
        if not selector:
            continue
        if _PSEUDO_ELEMENT.search(selector):
            problems.append(f"selector {selector!r} was left out: pseudo-elements are not used; style the element")
            continue
        if selector[0] in ">+~|&" or "&" in selector:
            problems.append(f"selector {selector!r} was left out: it must start with an element, class or id")
            continue
        if _ROOTS.match(selector):
            rest = _ROOTS.sub("", selector, count=1)
            rest = _ROOTS_ANYWHERE.sub("", rest) if _ROOTS_ANYWHERE.search(rest) else rest
            if "+" in rest or "~" in rest:  # from the wrapper, a sibling combinator reaches the footer
                problems.append(f"selector {selector!r} was left out: it selects beside the message")
                continue
            scoped.append(f"#{CONTENT_ID}{rest}" if rest[:1] in (".", "#", "[", ":") else f"#{CONTENT_ID} {rest}".rstrip())
            continue
        if _ROOTS_ANYWHERE.search(selector):
            problems.append(f"selector {selector!r} was left out: html and body may only start a selector")
            continue
        scoped.append(f"#{CONTENT_ID} {selector}")
    return scoped


def _split_selectors(prelude: list[Any]) -> list[str]:
    """Split a selector list on its top-level comma tokens (tinycss2 has already put strings,
    escapes, comments and the insides of (), [] and functions in tokens of their own)."""
    parts: list[list[Any]] = [[]]
    for token in prelude:
        if token.type == "literal" and token.value == ",":
            parts.append([])
        elif token.type != "comment":
            parts[-1].append(token)
    return [tinycss2.serialize(part).strip() for part in parts]


def size_problem(document: str) -> str | None:
    size = len(document.encode("utf-8"))
    if size > HTML_SIZE_LIMIT:
        return (f"the HTML part is {size / 1024:.0f} KB: Gmail clips messages past {HTML_SIZE_LIMIT // 1024} KB, "
                "and the footer, last, would be cut off; make the template smaller (images instead of inline "
                "data, fewer nested tables)")
    return None


#: Characters some readers break lines at (made line breaks for all), and characters that show
#: nothing (a line of them is blank).
_LINE_BREAKING = str.maketrans({c: "\n" for c in "\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85\r"})
_HAS_LINE_BREAKING = re.compile("[\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85\r]")
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e\u2061\u2062\u2063\u2064"


def collapse_blank_lines(text: str) -> str:
    """Runs of blank lines (whitespace or invisible characters only) become one blank line, and
    every character some reader breaks lines at is a line break: a template cannot push the
    footer out of sight, nor show a reader lines the checks did not see."""
    lines: list[str] = []
    if _HAS_LINE_BREAKING.search(text):  # str.translate with a table is slow on a long text
        text = text.translate(_LINE_BREAKING)
    for line in text.split("\n"):
        if line.strip().strip(_INVISIBLE).strip():
            lines.append(line)
        elif lines and lines[-1]:
            lines.append("")
    return "\n".join(lines)


#: A bare host with a path starts only where a run of dotted words starts, and its parts are not
#: given back: "a.a.a.…" (40 KB) took the search 35 s, each word boundary scanning to the run's end.
_URL_IN_TEXT = re.compile(r"https?://\S+|mailto:\S+|www\.\S+|(?<![\w-])(?<!\w\.)[\w-]++(?:\.[\w-]++)++/\S*",
                          re.IGNORECASE)


def text_problems(text: str, unsubscribe_url: str) -> list[str]:
    """A paragraph of the template's text offering to unsubscribe may only point to the footer's
    URL (a paragraph: the words and the address are often on two lines)."""
    problems = []
    for paragraph in re.split(r"\n\s*\n", text):
        if ("." in paragraph or "mailto:" in paragraph.lower()) and says_unsubscribe(paragraph):
            for url in (u.rstrip(".,;:)>]") for u in _URL_IN_TEXT.findall(paragraph)):
                if url != unsubscribe_url:
                    problems.append(f"the text offers to unsubscribe at {url[:80]}: only the footer's link "
                                    "unsubscribes; use {{ unsubscribe_url }} or remove the line")
    return problems


def check_footer_text(text: str, required_texts: list[str], unsubscribe_url: str) -> list[str]:
    """The text part shows each required sentence and the unsubscribe URL."""
    flat = " ".join(text.split())
    problems = [f"the text part does not show {t!r}" for t in required_texts if " ".join(t.split()) not in flat]
    if unsubscribe_url not in text:
        problems.append("the text part has no unsubscribe URL")
    return problems


# --------------------------------------------------------------------------- one rebuild per run

#: A contact's value in a probe rendering: U+E000, its index, U+E001 (private-use characters,
#: which the parser and the serialiser leave as they are, and no real value holds).
_VALUE_MARK = re.compile("\ue000(\\d+)\ue001")
#: The unsubscribe URL in a probe rendering.
URL_MARK = "\ue002"
_MARKS = re.compile("[\ue000-\ue002]")


def value_mark(index: int) -> str:
    return f"\ue000{index}\ue001"


#: Before a mark, what would make the tokenizer read a real value other than as text: a tag or
#: markup declaration opening ("<", "</", "<!", "<?") or a character reference being written
#: ("&", "&co" + "py").
_UNSAFE_BEFORE = re.compile(r"<[!/?]?\Z")
_REFERENCE_SO_FAR = re.compile(r"[A-Za-z0-9#]*")
#: Elements whose text is not plain text.
_RAW_TEXT = frozenset({"style", "script", "title", "textarea", "xmp", "iframe", "noembed", "noframes",
                       "noscript", "plaintext"})
_ESCAPED = re.compile("[&<>\"']")
_SERIALISED = re.compile("[&<>\xa0]")
_SAFE_URL = re.compile(r"[A-Za-z0-9:/._~%?=+-]+\Z")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Reuse:
    """The rebuild of a probe rendering, reused for every message whose HTML is that rendering with
    the recipient's values in place of the marks.

    Rebuilding is the same for two documents that differ only by text between tags: the parser
    makes the same tree, and the rules look at elements, attributes and styles, not at text, except
    for what a link says (kept, and checked again with each recipient's values) and whether an
    element is blank (a mark is not; a value must not be either). `build` accepts a probe only when
    every mark stands where a value is read as text: in a text node outside raw-text elements,
    nothing before it that opens a tag or a character reference, none dropped or sent to the
    stylesheet; the URL may also be an href. `apply` accepts a message only when its HTML is
    the probe with the values escaped in place of the marks, character for character, and each
    value is plain (not blank, no control or private-use characters). Anything else is rebuilt
    from scratch. tests/test_render.py compares both ways on fuzzed templates and values.
    """

    probe: str
    isolated: Isolated
    marked_link_words: tuple[str, ...]

    @classmethod
    def build(cls, probe: str) -> Reuse | None:
        isolated = isolate(probe, URL_MARK)
        if isolated.problems or any(_MARKS.search(n) for n in isolated.notes) or \
                _MARKS.search(isolated.style) or _MARKS.search(isolated.wrapper_attributes):
            return None
        for mark in _MARKS.finditer(probe):
            start = mark.start()
            if _UNSAFE_BEFORE.search(probe, max(0, start - 2), start):
                return None
            ampersand = probe.rfind("&", 0, start)  # a character reference the value would complete
            if ampersand >= 0 and _REFERENCE_SO_FAR.fullmatch(probe, ampersand + 1, start):
                return None
        if len(_VALUE_MARK.findall(probe)) != len(_VALUE_MARK.findall(isolated.content)) or \
                probe.count(URL_MARK) != isolated.content.count(URL_MARK):
            return None
        tree = LexborHTMLParser(f"<body>{isolated.content}</body>")
        in_text = {"value": 0, "url": 0}
        for node in tree.body.traverse(include_text=True) if tree.body is not None else []:
            if node.is_text_node:
                parent = node.parent
                text = node.text_content or ""
                if parent is not None and (parent.tag or "").lower() in _RAW_TEXT and _MARKS.search(text):
                    return None
                in_text["value"] += len(_VALUE_MARK.findall(text))
                in_text["url"] += text.count(URL_MARK)
            elif node.is_element_node:
                for name, value in node.attributes.items():
                    if value and _VALUE_MARK.search(value):
                        return None
                    if value and URL_MARK in value and (name.lower() != "href" or value.strip() != URL_MARK):
                        return None
                    in_text["url"] += (value or "").count(URL_MARK) if name.lower() == "href" else 0
        if in_text["value"] != len(_VALUE_MARK.findall(isolated.content)) or \
                in_text["url"] != isolated.content.count(URL_MARK):
            return None
        return cls(probe, isolated, tuple(w for w in isolated.link_words if _MARKS.search(w)))

    def apply(self, html: str, values: list[str], unsubscribe_url: str) -> Isolated | None:
        """The rebuild of `html`, or None when it is not the probe with these values in place."""
        if not _SAFE_URL.match(unsubscribe_url):
            return None
        for value in values:
            # Blank by any definition the rules use, or with blank edges (the parser may move
            # whitespace apart from the rest: tables, <head>), the value goes to a fresh rebuild.
            if value != value.strip() or not value.strip(_BLANK_CHARACTERS) or _MARKS.search(value) \
                    or _CONTROL.search(value):
                return None
        # as Jinja's autoescape writes them (most values have nothing to escape)
        escaped = [str(markupsafe.escape(v)) if _ESCAPED.search(v) else v for v in values]
        try:
            expected = _VALUE_MARK.sub(lambda m: escaped[int(m.group(1))], self.probe)
        except IndexError:
            return None
        if expected.replace(URL_MARK, unsubscribe_url) != html:
            return None
        for words in self.marked_link_words:
            if says_unsubscribe(_VALUE_MARK.sub(lambda m: values[int(m.group(1))], words)
                                .replace(URL_MARK, unsubscribe_url)):
                return None
        as_text = [v.replace("&", "&amp;").replace("\xa0", "&nbsp;").replace("<", "&lt;").replace(">", "&gt;")
                   if _SERIALISED.search(v) else v for v in values]
        content = _VALUE_MARK.sub(lambda m: as_text[int(m.group(1))], self.isolated.content)
        done = self.isolated
        return Isolated(blank_height=done.blank_height, style=done.style,
                        wrapper_attributes=done.wrapper_attributes,
                        content=content.replace(URL_MARK, unsubscribe_url), notes=list(done.notes))
