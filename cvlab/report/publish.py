"""Exporting an executed notebook for reading and printing: offline HTML (MathML, tables fitted to an A4 page)
and PDF through headless Chromium. Used by the report runner and by the submission document."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from ..core.runs import atomic_write_bytes, atomic_write_text

def _mathml_renderer_class():
    """nbconvert's Markdown renderer with LaTeX turned into MathML (browsers render it offline).

    None when latex2mathml is missing: math then stays as TeX source in the HTML.
    """
    try:
        from latex2mathml.converter import convert
    except ImportError:
        return None
    from html import escape
    from nbconvert.filters.markdown_mistune import IPythonRenderer

    def mathml(tex: str, display: str) -> str:
        try:
            return convert(tex, display=display)
        except Exception:  # an unsupported command: show the source rather than fail the export
            return f"<code>{escape(tex)}</code>"

    class MathMLRenderer(IPythonRenderer):
        def block_math(self, body: str) -> str:
            return mathml(body, "block")

        def inline_math(self, body: str) -> str:
            return mathml(body, "inline")

        def latex_environment(self, name: str, body: str) -> str:
            return mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", "block")

    return MathMLRenderer


# A lab page without the scripts it would fetch from a CDN (require.js, MathJax, mermaid).
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">{% raw %}
{{CSS}}{% endraw %}</style>
{%- endblock extra_css -%}
"""


def stylesheet(name: str) -> str:
    """The text of cvlab/report/`name` (a .css file shipped with the package)."""
    return Path(__file__).with_name(name).read_text(encoding="utf-8")


def offline_html_exporter(no_input: bool, extra_css: str = ""):
    """An HTMLExporter whose output needs no network: images embedded, no CDN scripts, math as MathML;
    `extra_css` (CSS text) is added after the offline page's own styles (publish.css)."""
    from jinja2 import DictLoader, pass_context
    from nbconvert import HTMLExporter
    from nbconvert.filters.markdown_mistune import MarkdownWithMath

    renderer_class = _mathml_renderer_class()

    class OfflineHTMLExporter(HTMLExporter):
        @pass_context
        def markdown2html(self, context, source):
            if renderer_class is None:
                return super().markdown2html(context, source)
            cell = context.get("cell", {})
            renderer = renderer_class(
                escape=False, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
                path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links,
                **self.lexer_options)
            return MarkdownWithMath(renderer=renderer).render(source)

    return OfflineHTMLExporter(
        template_name="lab", extra_loaders=[DictLoader({
            "cvlab_offline.html.j2": OFFLINE_TEMPLATE.replace("{{CSS}}", stylesheet("publish.css")),
            "cvlab_extra.html.j2": "{%- extends 'cvlab_offline.html.j2' -%}{%- block extra_css -%}{{ super() }}"
                                   "<style type=\"text/css\">{% raw %}" + extra_css + "{% endraw %}</style>"
                                   "{%- endblock extra_css -%}"})],
        template_file="cvlab_extra.html.j2" if extra_css else "cvlab_offline.html.j2",
        embed_images=True, exclude_input=no_input,
        exclude_input_prompt=no_input, exclude_output_prompt=no_input)


# Printable width of an A4 page in characters of a table at the print stylesheet's 0.68 em: 186 mm (the
# narrowest margins used) at ~8 px per character as Chromium lays out the lab page (measured) -> ~84 characters.
TABLE_CHARS_AT_DEFAULT, TABLE_DEFAULT_EM, TABLE_MIN_EM = 84, 0.68, 0.46


def _cells_html(table: str) -> list[list[str]]:
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)
    return [[re.sub(r"<[^>]+>", " ", c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r, re.S)] for r in rows]


def _cells_markdown(text: str) -> list[list[str]]:
    return [[c.replace("`", "") for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.strip().startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|?", line.strip())]


def _text_width(text: str) -> float:
    """Width of `text` in digit widths (a CJK character is about two)."""
    import unicodedata
    return sum(2.0 if unicodedata.east_asian_width(ch) in "WF" else 1.0 for ch in text)


def table_min_chars(rows: list[list[str]]) -> float:
    """The narrowest a table can get wrapping at spaces only: per column its longest word, plus padding."""
    import html as html_lib

    widths: dict[int, float] = {}
    for row in rows:
        for i, cell in enumerate(row):
            words = html_lib.unescape(cell).split() or [""]
            widths[i] = max(widths.get(i, 0.0), max(_text_width(w) for w in words))
    return sum(w + 1.6 for w in widths.values())


def table_font(rows: list[list[str]]) -> tuple[float, bool]:
    """(font size in em, whether words must break anywhere) that fits the table to the A4 width."""
    needed = table_min_chars(rows)
    em = min(TABLE_DEFAULT_EM, TABLE_DEFAULT_EM * TABLE_CHARS_AT_DEFAULT / max(needed, 1.0))
    return max(em, TABLE_MIN_EM), em < TABLE_MIN_EM


def fit_tables(nb) -> int:
    """Wrap each wide table output (HTML or Markdown) in a div with the font size that fits it on an A4 page;
    the count of tables shrunk. Works on a copy the exporter renders, never on the executed notebook."""
    shrunk = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            for mime, cells_of in (("text/html", _cells_html), ("text/markdown", _cells_markdown)):
                text = data.get(mime, "")
                if "<table" not in text and not (mime == "text/markdown" and "|---" in text):
                    continue
                em, tight = table_font(cells_of(text))
                if em >= TABLE_DEFAULT_EM:
                    continue
                shrunk += 1
                css = ' cvlab-tight' if tight else ''
                data[mime] = (f'<div class="cvlab-table{css}" style="font-size: {em:.2f}em">\n\n{text}\n\n</div>\n')
                break
    return shrunk


def count_math(nb) -> int:
    pattern = re.compile(r"\$\$.+?\$\$|\$[^$\n]+\$|\\\(.+?\\\)|\\\[.+?\\\]", re.S)
    return sum(len(pattern.findall(c.source)) for c in nb.cells if c.cell_type == "markdown")


def export_html(executed: Path, html: Path, source_dir: Path, no_input: bool = False,
                warn: Callable[[str], None] = print) -> Path:
    """Write `executed` as one self-contained HTML file (Markdown images resolved from `source_dir`)."""
    import nbformat

    nb = nbformat.read(str(executed), as_version=4)
    if _mathml_renderer_class() is None and count_math(nb):
        warn(f"{executed.stem}: {count_math(nb)} formula(s) left as TeX in the HTML; "
             "pip install latex2mathml to render them offline")
    fit_tables(nb)
    exporter = offline_html_exporter(no_input)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(source_dir),
                                                                      "name": executed.stem}})
    atomic_write_text(html, body)  # a full disk leaves the earlier file or none, never half a page
    return html


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "msedge")


# Where no Chromium is found, none of the PyPI-only routes serves (measured on the smoke submission, 2026-12:
# WeasyPrint flattens the MathML formulas into unreadable text, QtWebEngine from PyQt6-WebEngine needs the same
# system libraries as Chromium (NSS, X11, ALSA: root to install), xhtml2pdf stops with a LayoutError, playwright and
# pyppeteer download Chromium from outside PyPI). The student's own Chrome or Edge prints the HTML to the same pages
# (compared page by page): the stylesheets set A4 and the margins, and the lab page forces background colours
# (print-color-adjust: exact); only the browser's own header and footer must be turned off.
PRINT_FROM_BROWSER = ("PDF: none made here (no Chromium found; pip gives no route that prints this page): open the .html "
                      "in Chrome or Edge, Ctrl+P, Save as PDF, margins Default, Headers and footers off -> the same A4 "
                      "pages (or set CVLAB_CHROMIUM to a Chrome/Edge binary)")


def pdf_route() -> str | None:
    """What export_pdf would print with: a Chromium-family browser, else nbconvert's webpdf (playwright); None."""
    import importlib.util

    browser = find_browser()
    if browser:
        return browser
    return "playwright" if importlib.util.find_spec("playwright") is not None else None


def find_browser() -> str | None:
    """A Chromium-family browser: $CVLAB_CHROMIUM, else the first of BROWSERS on PATH."""
    if os.environ.get("CVLAB_CHROMIUM"):
        return os.environ["CVLAB_CHROMIUM"]
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def headless_browser_args(user_data_dir: str) -> list[str]:
    args = ["--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
            f"--user-data-dir={user_data_dir}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


def cjk_font_present() -> bool | None:
    """Whether fontconfig knows a Chinese font (None where fc-list is missing, e.g. Windows/macOS)."""
    if not shutil.which("fc-list"):
        return None
    done = subprocess.run(["fc-list", ":lang=zh", "family"], capture_output=True, text=True)
    return bool(done.stdout.strip())


def chromium_pdf(browser: str, html: Path, pdf: Path, timeout: float = 180) -> str:
    """Print `html` to `pdf` (A4 from the page's print styles) with headless `browser`; "" or what went wrong."""
    part = pdf.resolve().with_name(f".{pdf.name}.part")  # renamed into place once whole: a full disk leaves no half PDF
    with tempfile.TemporaryDirectory(prefix="cvlab-chromium-") as profile_dir:
        cmd = [browser, *headless_browser_args(profile_dir), "--no-pdf-header-footer",
               f"--print-to-pdf={part}", html.resolve().as_uri()]
        try:
            subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            part.unlink(missing_ok=True)
            return f"{browser} failed ({type(exc).__name__})"
    try:
        whole = part.is_file() and part.stat().st_size > 0 and b"%%EOF" in part.read_bytes()[-1024:]
        if whole:
            os.replace(part, pdf)
    finally:
        part.unlink(missing_ok=True)
    return "" if whole else f"{browser} wrote no PDF (or an incomplete one)"


def export_pdf(html: Path, pdf: Path, executed: Path, no_input: bool = False) -> tuple[Path | None, str]:
    """PDF from the exported HTML with headless Chromium (same page as the HTML); else nbconvert's
    webpdf (playwright); returns (path or None, one line saying what happened or what is missing)."""
    browser = find_browser()
    if browser:
        failed = chromium_pdf(browser, html, pdf)
        if failed:
            return None, f"PDF not made: {failed}"
        note = "" if cjk_font_present() is not False else \
            " (no Chinese font found: Chinese shows as boxes; apt-get install fonts-noto-cjk, or without root " \
            "copy a CJK .otf/.ttf into ~/.local/share/fonts)"
        return pdf, f"PDF via {Path(browser).name}{note}"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return None, PRINT_FROM_BROWSER
    try:
        from nbconvert import WebPDFExporter
        exporter = WebPDFExporter(disable_sandbox=True, embed_images=True, exclude_input=no_input,
                                  exclude_input_prompt=no_input, exclude_output_prompt=no_input)
        data, _ = exporter.from_filename(str(executed))
        atomic_write_bytes(pdf, data)
        return pdf, "PDF via nbconvert webpdf (playwright)"
    except Exception as exc:
        return None, f"PDF not made: nbconvert webpdf failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
