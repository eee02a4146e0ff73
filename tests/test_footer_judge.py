"""The footer judged by a real browser, for a corpus of hostile templates and ordinary layouts.

Every template in tests/corpus/ is rendered by `mailer preview` in a project. A refusal
(exit 2 or 3) must name the template file; for a hostile template that is a pass, for an
ordinary layout a failure. An accepted message is judged on what a person gets:

- the HTML part of the .eml, loaded in headless Debian Chromium (JavaScript off, no network,
  like a mail client pane) at 600x900 and at 375x812: the footer's unsubscribe link (the last
  <a> whose href is the URL of the List-Unsubscribe header), the organisation's name, its
  postal address and the source sentence must each be on screen once scrolled into view, of
  a readable size, not transparent nor hidden, the element at their own centre (nothing laid
  over them), and their glyphs must show on screen with contrast: the pixels are compared
  with a second screenshot where only that text is made transparent (so whatever paints,
  blends, filters, masks or covers it, the difference is what a person sees of it);
- no stretch of more than 2500px without any text or image before the link (a footer
  pushed away by a blank spacer; an image counts when it loaded and is not all one colour);
- the HTML part under Gmail's clipping point (102 KB);
- no link other than mailer's saying "unsubscribe" / "se désabonner" / "opt out";
- the text part: the footer (organisation, source, unsubscribe URL) at its end, no run of
  more than 2 blank lines, no other unsubscribe link.

The judge relies only on what a message shows: the List-Unsubscribe URL, the organisation's
name and address from the config and the contact's source; not on mailer's ids or markup.
"""
from __future__ import annotations

import email
import re
import shutil
from email import policy
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CAMPAIGN, CONFIG, CSV, SECRET, Project
from playwright.sync_api import sync_playwright

CORPUS = Path(__file__).parent / "corpus"
CASES = sorted(p for p in CORPUS.glob("*/*.html.j2"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--font-render-hinting=none", "--disable-lcd-text"]
MAIL_URL = "http://mail.invalid/message.html"
VIEWPORTS = [(600, 900), (375, 812)]

ORGANIZATION = "Acme SAS"
ADDRESS = "12 rue de la Paix, 75002 Paris, France"
SOURCE = "Salon VivaTech 2026"  # Claire's source in conftest.CSV, quoted in the footer's source sentence
GMAIL_CLIP = 102 * 1024
MAX_BLANK_STRETCH = 2500  # px without text or image before the footer's link
UNSUBSCRIBE_WORDS = re.compile(r"unsubscri|d[ée]sabonn|d[ée]sinscri|opt[\s-]?out", re.I)

# Finds the footer's pieces (kept in `window.judged` for the calls that follow). Runs in the
# message's page: its own scripts are off, Playwright's evaluate still runs.
FIND = r"""
([url, organization, address, source]) => {
  const norm = (s) => s.replace(/\s+/g, ' ');
  const lastText = (needle) => {
    const walker = document.createTreeWalker(document.documentElement, NodeFilter.SHOW_TEXT);
    let found = null;
    for (let n = walker.nextNode(); n; n = walker.nextNode()) if (norm(n.data).includes(needle)) found = n;
    return found;
  };
  const links = [...document.querySelectorAll('a[href]')].filter(a => a.getAttribute('href').trim() === url);
  window.judged = {
    link: links.length ? links[links.length - 1] : null,
    organization: lastText(organization),
    address: lastText(address.split(',')[0]),
    source: lastText(source),
  };
  return Object.keys(window.judged).filter(k => !window.judged[k]);
}
"""

# Scrolls one piece into view (the first one found, or the one named) and measures the
# pieces: their boxes, styles, whether on screen, and which element is at their centre.
MEASURE = r"""
([which]) => {
  const vw = innerWidth, vh = innerHeight;
  const names = Object.keys(window.judged).filter(k => window.judged[k] && (!which || k === which));
  const rectsOf = (item) => {
    let list;
    if (item.nodeType === 1) list = item.getClientRects();
    else { const range = document.createRange(); range.selectNodeContents(item); list = range.getClientRects(); }
    return [...list].filter(r => r.width > 0 && r.height > 0);
  };
  const biggest = (rs) => rs.reduce((a, b) => (a && a.width * a.height >= b.width * b.height) ? a : b, null);
  scrollTo(0, 0);
  if (names.length) {
    const first = window.judged[names[0]];
    const box = biggest(rectsOf(first));
    if (box && (box.left < 0 || box.top < 0 || box.right > vw || box.bottom > vh)) {
      (first.nodeType === 1 ? first : first.parentElement).scrollIntoView({block: 'center', inline: 'nearest'});
      const r = biggest(rectsOf(first));  // the text itself, when its element is taller than the screen
      if (r && (r.top < 0 || r.bottom > vh)) scrollBy(0, r.top + r.height / 2 - vh / 2);
    }
  }
  // Scrolled into view by the judge, but a box a person cannot scroll (overflow hidden or clip)?
  const hiddenScroll = (element) => {
    const shut = (e) => { const s = getComputedStyle(e); return /hidden|clip/.test(s.overflowX + ' ' + s.overflowY); };
    for (let e = element.parentElement; e; e = e.parentElement) {
      if ((e.scrollTop || e.scrollLeft) && e !== document.scrollingElement && shut(e)) return true;
    }
    return !!(scrollX || scrollY) && (shut(document.documentElement) || shut(document.body));
  };
  const out = {};
  for (const name of names) {
    const item = window.judged[name];
    const element = item.nodeType === 1 ? item : item.parentElement;
    const rects = rectsOf(item);
    const big = biggest(rects);
    const style = getComputedStyle(element);
    let opacity = 1;
    for (let e = element; e; e = e.parentElement || e.getRootNode().host || null) {
      opacity *= parseFloat(getComputedStyle(e).opacity);
    }
    const m = {
      chars: item.textContent.replace(/\s/g, '').length,
      rects: rects.map(r => ({x: r.left, y: r.top, w: r.width, h: r.height})),
      width: rects.reduce((s, r) => s + r.width, 0),
      height: big ? big.height : 0,
      fontSize: parseFloat(style.fontSize),
      opacity: opacity,
      visible: element.checkVisibility({opacityProperty: true, visibilityProperty: true,
                                        contentVisibilityAuto: true}),
      inert: !!element.closest('[inert]'),
      hiddenScroll: hiddenScroll(element),
      pointerEvents: style.pointerEvents,
      absoluteLeft: big ? big.left + scrollX : null,
      scroll: [scrollX, scrollY],
      onScreen: !!big && big.left >= -1 && big.top >= -1 && big.right <= vw + 1 && big.bottom <= vh + 1,
    };
    if (big) {
      const hit = document.elementFromPoint(big.left + big.width / 2, big.top + big.height / 2);
      m.hit = hit ? hit.outerHTML.slice(0, 120) : null;
      m.hitOk = !!hit && (hit === element || element.contains(hit));
    }
    out[name] = m;
  }
  return out;
}
"""

# Makes the named pieces' text transparent whatever the template's CSS says (an inline
# !important `all: unset` on a wrapper of our own), or puts the text back.
BLANK = r"""
([names, on]) => {
  if (!on) {
    for (const wrap of [...document.querySelectorAll('mailer-judge-blank')]) wrap.replaceWith(...wrap.childNodes);
    return 0;
  }
  let count = 0;
  for (const name of names) {
    const item = window.judged[name];
    const nodes = [];
    if (item.nodeType === 3) nodes.push(item);
    else {
      const walker = document.createTreeWalker(item, NodeFilter.SHOW_TEXT);
      for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
    }
    for (const node of nodes) {
      const wrap = document.createElement('mailer-judge-blank');
      wrap.setAttribute('style', 'all: unset !important; color: transparent !important; ' +
        '-webkit-text-fill-color: transparent !important; -webkit-text-stroke-width: 0 !important; ' +
        'text-shadow: none !important; transition: none !important; animation: none !important');
      node.replaceWith(wrap);
      wrap.append(node);
      count++;
    }
  }
  return count;
}
"""

# The largest vertical stretch without text or image between the top of the page and the link.
BLANK_STRETCH = r"""
() => {
  const link = window.judged.link;
  if (!link) return null;
  const top = link.getBoundingClientRect().top + scrollY;
  const spans = [];
  const walker = document.createTreeWalker(document.documentElement, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.data.trim()) continue;
    range.selectNodeContents(n);
    for (const r of range.getClientRects()) if (r.height > 0) spans.push([r.top + scrollY, r.bottom + scrollY]);
  }
  // An image shows something only when it loaded and is not all one colour (a white picture
  // stretched tall is a blank stretch); remote images are not loaded here, as in a client that
  // blocks them until asked.
  const showsSomething = (img) => {
    if (!img.complete || !img.naturalWidth || !img.naturalHeight) return false;
    const canvas = document.createElement('canvas');
    canvas.width = Math.min(img.naturalWidth, 64); canvas.height = Math.min(img.naturalHeight, 64);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    let d;
    try { d = ctx.getImageData(0, 0, canvas.width, canvas.height).data; } catch (e) { return true; }
    for (let i = 4; i < d.length; i += 4)
      for (let c = 0; c < 4; c++) if (Math.abs(d[i + c] - d[c]) > 8) return true;
    return false;
  };
  for (const e of document.querySelectorAll('img, svg, video, canvas, input, button, hr')) {
    if (e.tagName === 'IMG' && !showsSomething(e)) continue;
    const r = e.getBoundingClientRect();
    if (r.height > 0) spans.push([r.top + scrollY, r.bottom + scrollY]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  let reached = 0, gap = 0;
  for (const [a, b] of spans) {
    if (a >= top) break;
    gap = Math.max(gap, a - reached);
    reached = Math.max(reached, b);
  }
  return Math.max(gap, top - reached);
}
"""

# For each job, compares two screenshots of the same clip inside each piece's rectangles: the pixels whose
# luminance contrast between "text shown" and "text transparent" is at least 3:1.
INK = r"""
async (jobs) => {
 const results = [];
 for (const [before, after, pieces] of jobs) {
  const load = async (b64) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const bitmap = await createImageBitmap(new Blob([bytes], {type: 'image/png'}));
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  };
  const [a, b] = [await load(before), await load(after)];
  const linear = new Float64Array(256);
  for (let v = 0; v < 256; v++) { const c = v / 255; linear[v] = c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; }
  const lum = (d, i) => 0.2126 * linear[d[i]] + 0.7152 * linear[d[i + 1]] + 0.0722 * linear[d[i + 2]];
  const out = {};
  for (const [name, rects] of Object.entries(pieces)) {
    let ink = 0;
    const rows = new Set();
    for (const r of rects) {
      for (let y = Math.max(0, Math.floor(r.y)); y < Math.min(a.height, Math.ceil(r.y + r.h)); y++) {
        for (let x = Math.max(0, Math.floor(r.x)); x < Math.min(a.width, Math.ceil(r.x + r.w)); x++) {
          const i = (y * a.width + x) * 4;
          const la = lum(a.data, i), lb = lum(b.data, i);
          if ((Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05) >= 3) { ink++; rows.add(y); }
        }
      }
    }
    out[name] = {ink, rows: rows.size};
  }
  results.push(out);
 }
 return results;
}
"""


# One call per viewport: puts back any text BLANK made transparent, finds the pieces (on the
# first call), measures the blank stretch, and measures the pieces.
STEP = f"""
([url, organization, address, source, first]) => {{
  ({BLANK})([[], false]);
  const missing = first ? ({FIND})([url, organization, address, source]) : [];
  const links = first ? [...document.querySelectorAll('a')].map(a => [a.getAttribute('href') || '',
      [a.textContent, a.title, a.getAttribute('aria-label') || '',
       ...[...a.querySelectorAll('img')].map(i => i.alt)].join(' ')]) : [];
  return {{missing, links, stretch: ({BLANK_STRETCH})(), measured: ({MEASURE})([null])}};
}}
"""


MEASURE_ONE = f"""
([which]) => {{
  ({BLANK})([[], false]);
  return ({MEASURE})([which]);
}}
"""


class Judge:
    """One browser for the module; one page for the messages (no scripts, no network), reused."""

    def __init__(self) -> None:
        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = self.browser.new_context(java_script_enabled=False, viewport={"width": 600, "height": 900},
                                           device_scale_factor=1)
        context.route("**/*", lambda route: route.abort())  # remote images, fonts, stylesheets: not loaded
        self.page = context.new_page()
        self.page.set_default_timeout(10_000)
        self.cdp = context.new_cdp_session(self.page)

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()

    def problems(self, html: str, url: str) -> list[str]:
        """What keeps a person from seeing and using the footer, at each viewport (the one the
        page is at first: resizing costs more than measuring)."""
        size = self.page.viewport_size
        order = VIEWPORTS if (size["width"], size["height"]) == VIEWPORTS[0] else VIEWPORTS[::-1]
        self.page.set_content(html, wait_until="load")
        found: list[str] = []
        jobs: list[list] = []
        pending: list[tuple[str, str, dict, int | None]] = []  # (viewport, piece, measure, job)
        for index, (width, height) in enumerate(order):
            if index:
                self.page.set_viewport_size({"width": width, "height": height})
            where = f"{width}px"
            step = self.page.evaluate(STEP, [url, ORGANIZATION, ADDRESS, SOURCE, index == 0])
            found += [f"{name}: not in the page" for name in step["missing"]]
            found += [f"a link that says {words.strip()[:60]!r} goes to {href[:80]!r}"
                      for href, words in step["links"] if UNSUBSCRIBE_WORDS.search(words) and href.strip() != url]
            if step["stretch"] is not None and step["stretch"] > MAX_BLANK_STRETCH:
                found.append(f"{where}: {step['stretch']:.0f}px without text or image before the unsubscribe link")
            measured = step["measured"]
            together = {name: m for name, m in measured.items() if m["onScreen"]}
            job = self._shots(together, jobs)
            for name, m in measured.items():
                if m["onScreen"]:
                    pending.append((where, name, m, job))
                    continue
                if m["rects"]:  # scrolled into view on its own
                    m = self.page.evaluate(MEASURE_ONE, [name])[name]
                pending.append((where, name, m, self._shots({name: m}, jobs) if m["onScreen"] else None))
        seen = self.page.evaluate(INK, jobs) if jobs else []
        for where, name, m, job in pending:
            ink = seen[job].get(name) if job is not None else None
            found += [f"{where} {name}: {p}" for p in self._verdict(name, m, ink, where)]
        return found

    def _verdict(self, name: str, m: dict, seen: dict | None, where: str) -> list[str]:
        if not m["rects"]:
            return ["has no box (not rendered)"]
        bad = []
        if m["height"] < (8 if name == "link" else 9):
            bad.append(f"{m['height']:.1f}px high")
        if m["width"] < 20 or m["width"] < 3 * m["chars"]:
            bad.append(f"{m['width']:.1f}px wide for {m['chars']} characters")
        if m["fontSize"] < 9:
            bad.append(f"font-size {m['fontSize']}px")
        if m["opacity"] < 0.6:
            bad.append(f"opacity {m['opacity']:.3g} up the ancestors")
        if not m["visible"]:
            bad.append("checkVisibility() is false (hidden, invisible or transparent)")
        if m["hiddenScroll"]:
            bad.append("reached only by scrolling a box a person cannot scroll (overflow hidden)")
        if m["inert"]:
            bad.append("inside an inert element")
        if name == "link" and m["pointerEvents"] == "none":
            bad.append("pointer-events: none")
        if not m["onScreen"]:
            return [*bad, f"not on screen once scrolled into view ({m['rects'][:2]}, scroll {m['scroll']})"]
        width = int(where.removesuffix("px"))
        if m["absoluteLeft"] is not None and not -1 <= m["absoluteLeft"] < width:
            bad.append(f"starts {m['absoluteLeft']:.0f}px from the left edge (off the first screen)")
        if not m.get("hitOk"):
            bad.append(f"covered: the element at its centre is {m.get('hit')!r}")
        # 12px Arial shows about 20 contrasting pixels per character, 9px text about 10.
        if seen is None or seen["ink"] < 5 * m["chars"] or seen["rows"] < 5:
            bad.append(f"its glyphs barely show: {seen} contrasting pixels (rows) for {m['chars']} characters")
        return bad

    def _shots(self, pieces: dict[str, dict], jobs: list[list]) -> int | None:
        """Screenshots of the pieces with their text shown, then made transparent: a job for INK."""
        if not pieces:
            return None
        size = self.page.viewport_size
        rects = [r for m in pieces.values() for r in m["rects"]]
        x0 = max(0, int(min(r["x"] for r in rects)) - 2)
        y0 = max(0, int(min(r["y"] for r in rects)) - 2)
        x1 = min(size["width"], int(max(r["x"] + r["w"] for r in rects)) + 3)
        y1 = min(size["height"], int(max(r["y"] + r["h"] for r in rects)) + 3)
        if x1 <= x0 or y1 <= y0:
            return None
        scroll_x, scroll_y = next(iter(pieces.values()))["scroll"]  # CDP clips in page coordinates
        clip = {"x": x0 + scroll_x, "y": y0 + scroll_y, "width": x1 - x0, "height": y1 - y0, "scale": 1}
        before = self.cdp.send("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        self.page.evaluate(BLANK, [list(pieces), True])
        after = self.cdp.send("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        local = {name: [{"x": r["x"] - x0, "y": r["y"] - y0, "w": r["w"], "h": r["h"]} for r in m["rects"]]
                 for name, m in pieces.items()}
        jobs.append([before, after, local])
        return len(jobs) - 1


@pytest.fixture(scope="module")
def judge():
    j = Judge()
    yield j
    j.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Project:
    p = Project(tmp_path_factory.mktemp("judge"), CliRunner())
    p.write("config.toml", CONFIG)
    p.write("campaigns/offer.toml", CAMPAIGN)
    p.write("contacts.csv", CSV)
    assert p.run("db", "init").exit_code == 0
    return p


def render(project: Project, case: Path, out: str):
    """`mailer preview` of the case as the campaign's template; returns (result, .eml bytes or None)."""
    project.write("templates/offer.html.j2", case.read_text("utf-8"))
    text = case.with_name(case.name.replace(".html.j2", ".txt.j2"))
    txt = project.root / "templates" / "offer.txt.j2"
    if text.exists():
        project.write("templates/offer.txt.j2", text.read_text("utf-8"))
    elif txt.exists():
        txt.unlink()
    folder = project.root / "out" / out
    result = project.run("preview", str(project.campaign), "--out", str(folder), "--to", "claire@client.example")
    emls = sorted(folder.glob("*.eml")) if folder.exists() else []
    return result, (emls[0].read_bytes() if emls else None), text.exists()


def text_problems(text: str, url: str, mailto: str) -> list[str]:
    found = []
    lines = text.splitlines()
    run = longest = 0
    for line in lines:
        run = run + 1 if not line.strip() else 0
        longest = max(longest, run)
    if longest > 2:
        found.append(f"a run of {longest} blank lines")
    filled = [line for line in lines if line.strip()]
    tail = "\n".join(filled[-10:])
    for needle in (ORGANIZATION, ADDRESS, SOURCE, url):
        if needle not in tail:
            found.append(f"{needle[:40]!r} is not in the footer at the end of the text part")
    for line in lines:
        if UNSUBSCRIBE_WORDS.search(line):
            for target in re.findall(r"(?:https?://|mailto:|www\.)[^\s<>\"')]+", line):
                if target.rstrip(".,;") not in (url, mailto) and not url.startswith(target.rstrip(".,;")):
                    found.append(f"another unsubscribe link in the text part: {line.strip()[:100]!r}")
    return found


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name.removesuffix('.html.j2')}")
def test_footer_is_seen_or_the_template_is_refused(workspace: Project, judge: Judge, case: Path) -> None:
    hostile = case.parent.name == "hostile"
    result, raw, has_text = render(workspace, case, case.name)
    if result.exit_code in (2, 3):
        assert re.search(r"offer\.(html|txt)\.j2", result.output), \
            f"the refusal does not name the template file:\n{result.output}"
        assert hostile, f"an ordinary layout is refused (exit {result.exit_code}):\n{result.output[-2000:]}"
        return
    assert result.exit_code == 0, f"exit {result.exit_code}:\n{result.output[-2000:]}"
    assert raw is not None, ("no message written although the run exited 0: a template the footer check "
                             f"blocks must be a refusal (exit 3) naming the file:\n{result.output[-1500:]}")
    message = email.message_from_bytes(raw, policy=policy.default)
    targets = re.findall(r"<([^>]+)>", message["List-Unsubscribe"])
    url = next(t for t in targets if t.startswith("https://"))
    mailto = next((t for t in targets if t.startswith("mailto:")), "")
    problems = []
    if has_text and case.name.startswith("text-fake"):
        problems.append("a text part with a fake unsubscribe link must be refused")
    problems += [f"text part: {p}" for p in text_problems(message.get_body(("plain",)).get_content(), url, mailto)]
    html_part = message.get_body(("html",))
    assert html_part is not None, "no HTML part"
    html = html_part.get_content()
    size = len(html.encode("utf-8"))
    if size > GMAIL_CLIP:
        problems.append(f"HTML part of {size} bytes: Gmail clips past {GMAIL_CLIP}, the footer last is cut off")
    problems += judge.problems(html, url)
    assert not problems, "\n".join(problems)


def test_the_corpus_is_complete() -> None:
    hostile = [p.name for p in CORPUS.glob("hostile/*.html.j2")]
    ordinary = [p.name for p in CORPUS.glob("ordinary/*.html.j2")]
    assert len(hostile) >= 100 and len(ordinary) >= 15
    classes = {"hide", "shrink", "cover", "move", "clip", "blend", "pseudo", "atrule", "element", "attr",
               "parser", "decoy", "size", "text"}
    assert {name.split("-")[0] for name in hostile} == classes
    for path in CORPUS.glob("*/*.j2"):
        assert "contact.first_name" in path.read_text("utf-8") or path.name.endswith(".txt.j2"), path.name
    assert SECRET  # the project runs with conftest's secret
