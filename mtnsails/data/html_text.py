"""HTML and Markdown pages as plain text in scrapyer's preserve-structure form.

`# heading` lines, `• item` lines and paragraphs separated by blank lines; scripts, styles,
navigation, headers, footers, code blocks, tables and images are dropped.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser


class _HTMLText(HTMLParser):
    """Visible text of a page as `# heading` lines, `• item` lines and paragraphs."""

    SKIP = {
        "script",
        "style",
        "nav",
        "footer",
        "header",
        "aside",
        "noscript",
        "form",
        "svg",
        "button",
        "template",
        "iframe",
        "select",
    }
    HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
    BLOCKS = {
        "p",
        "div",
        "section",
        "article",
        "main",
        "br",
        "tr",
        "table",
        "blockquote",
        "dd",
        "dt",
        "pre",
        "ul",
        "ol",
        "figure",
        "figcaption",
        "body",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.prefix = ""
        self.skipping: list[str] = []  # open SKIP tags (they nest)
        self.title = ""
        self.in_title = False

    def _break(self) -> None:
        text = " ".join("".join(self.current).split())
        if text:
            self.lines.append(self.prefix + text)
        self.current, self.prefix = [], ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        """Open a skipped element, a heading, a list item or a block (each starts a line)."""
        if tag in self.SKIP:
            self.skipping.append(tag)
        elif tag == "title":
            self.in_title = True
        elif not self.skipping:
            if tag in self.HEADINGS:
                self._break()
                self.lines.append("")
                self.prefix = "#" * int(tag[1]) + " "
            elif tag == "li":
                self._break()
                self.prefix = "• "
            elif tag in self.BLOCKS:
                self._break()
                if tag in ("p", "div", "section", "article", "blockquote", "table", "ul", "ol"):
                    self.lines.append("")

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        """`<br/>` ends the line."""
        if tag == "br" and not self.skipping:
            self._break()

    def handle_endtag(self, tag: str) -> None:
        """Close a skipped element, or end the line of a heading, item or block."""
        if tag in self.skipping:  # also closes skipped tags left open inside it
            del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag) :]
        elif tag == "title":
            self.in_title = False
        elif not self.skipping and (tag in self.HEADINGS or tag == "li" or tag in self.BLOCKS):
            self._break()
            if tag in self.HEADINGS or tag == "p":
                self.lines.append("")

    def handle_data(self, data: str) -> None:
        """Collect visible text (and the page title)."""
        if self.in_title:
            self.title += data
        elif not self.skipping:
            self.current.append(data)


def html_to_text(html: str) -> str:
    """Preserve-structure text of an HTML page (scripts, styles, nav, header, footer dropped)."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    parser._break()
    lines = parser.lines
    title = " ".join(parser.title.split())
    if title and not any(line.startswith("# ") for line in lines):
        lines.insert(0, f"# {title}")
    return "\n".join(lines)


MD_FENCE = re.compile(r"^(```|~~~)")


def markdown_to_text(markdown: str) -> str:
    """Markdown in the preserve-structure form: code blocks, tables and images dropped,
    links reduced to their text, emphasis and inline-code marks removed."""
    lines, in_code, previous = [], False, ""
    for line in markdown.splitlines():
        indented_code = line.startswith(("    ", "\t")) and not previous.strip()
        previous = "" if indented_code else line  # code goes on until a line is not indented
        if MD_FENCE.match(line.strip()):
            in_code = not in_code
            continue
        if in_code or indented_code or line.lstrip().startswith("|"):
            continue
        line = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", line)  # images
        line = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line)  # links -> their text
        line = re.sub(r"(\*\*|__|\*|`)", "", line)
        line = re.sub(r"^\s*(?:[-*+]|\d+[.)])\s+", "• ", line)  # list items
        lines.append(line)
    return "\n".join(lines)
