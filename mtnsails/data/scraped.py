"""Scraped web pages to question/answer pairs.

Input is what scrapyer writes (see docs/data-formats.md, "Scraped web content"): `content_<hash>.txt`
pages, flat or nested, in default mode (every text node on its own line, so one sentence can be
split over several lines) or `--preserve-structure` mode (`# Title` / `## Section` headings,
`• ` list items, blank lines between paragraphs), RSS item texts, plus the `.md`, `.html` and
`.txt` files users add. Each page goes through:

1. reading: once, as UTF-8 (undecodable files are skipped with a warning), media folders and
   binary files ignored;
2. lines: HTML and Markdown are turned into the preserve-structure form and sentences split
   over lines are rejoined;
3. cleaning: cookie / terms / "enable JavaScript" banners and boilerplate (a line found on many
   pages of the same folder, i.e. the same crawl) are dropped; then every line is classed as
   heading, prose, list item or leftover, and leftovers (navigation: short lines without a
   sentence end, C4's line rule) go too;
4. sections and chunks: a page splits at its headings; a section's prose splits at sentence
   boundaries into answers of at most `chunk_words` words, so every answer is complete;
5. questions: from the heading (never from the file name, which is a hash), phrased to fit it:
   "What are Python lists?", "How do I install the package?", "How does caching work?";
6. filtering: answers that copy another answer (exactly, or nearly by `NearDuplicateFinder`)
   go, and `DataQualityValidator` keeps only pairs that pass every rule.

Nothing here imports torch; no path is ever built from the pages' contents.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mtnsails.core.errors import MtnsailsError
from mtnsails.core.text_rules import ENDS_SENTENCE, SENTENCE_BREAK, sentences
from mtnsails.data.html_text import html_to_text, markdown_to_text
from mtnsails.data.questions import GENERIC, WordCases, follow_up_questions, natural_question

# -- settings ---------------------------------------------------------------------------------


@dataclass
class ScrapedSettings:
    """How pages become pairs. Defaults suit documentation sites."""

    chunk_words: int = 100  # answer size; ~100 words fit the 256-token training window twice
    # None: natural questions chosen per heading (DEFAULT_TEMPLATE where none fits);
    # a template with {topic}: used for every question, as the original did.
    prompt_template: str | None = None
    keep_all: bool = False  # keep pairs the quality validator rejects
    # A line is boilerplate when it is on >= boilerplate_min_pages pages of one folder, or on
    # >= boilerplate_fraction of them (and at least 2): menus, footers, "Edit this page".
    boilerplate_min_pages: int = 3
    boilerplate_fraction: float = 0.5
    # One sentence longer than chunk_words is kept whole up to this many words (0: twice
    # chunk_words); longer "sentences" are run-on text (minified pages, tables) and dropped.
    max_sentence_words: int = 0
    max_file_bytes: int = 20_000_000  # bigger files are not pages

    def __post_init__(self) -> None:
        if self.chunk_words < 10:
            raise MtnsailsError(f"--chunk-words {self.chunk_words}: must be at least 10")
        if self.prompt_template is not None and "{topic}" not in self.prompt_template:
            raise MtnsailsError(f'--prompt-template "{self.prompt_template}": must contain {{topic}}')
        if not self.max_sentence_words:
            self.max_sentence_words = 2 * self.chunk_words


# -- result -----------------------------------------------------------------------------------


@dataclass
class ScrapeResult:
    """The pairs made, and counts of what happened on the way (for the summary)."""

    conversations: list[dict] = field(default_factory=list)
    files_read: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> files
    dropped_lines: Counter = field(default_factory=Counter)  # boilerplate/banner/navigation
    sections: int = 0
    pairs_made: int = 0
    duplicates: int = 0
    dropped_passages: Counter = field(default_factory=Counter)  # reason -> passages
    quality_removed: Counter = field(default_factory=Counter)  # issue code -> pairs

    def format_summary(self) -> str:
        """What the script prints: files read and skipped, lines and pairs removed and why."""
        lines = [f"files read: {self.files_read}"]
        if self.skipped:
            lines.append(
                f"files skipped: {sum(self.skipped.values())} ("
                + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
                + ")"
            )
        if self.dropped_lines:
            lines.append("lines removed: " + ", ".join(f"{n} {why}" for why, n in self.dropped_lines.most_common()))
        lines.append(f"sections: {self.sections}, pairs made: {self.pairs_made}")
        if self.dropped_passages:
            lines.append(
                "passages dropped: " + ", ".join(f"{n} {why}" for why, n in self.dropped_passages.most_common())
            )
        if self.duplicates:
            lines.append(f"duplicates removed (of another pair or of the output file): {self.duplicates}")
        if self.quality_removed:
            lines.append(
                f"removed by quality checks: {sum(self.quality_removed.values())} ("
                + ", ".join(f"{n} {code}" for code, n in self.quality_removed.most_common())
                + ")"
            )
        lines.append(f"pairs written: {len(self.conversations)}")
        return "\n".join(lines)


# -- finding and reading pages ----------------------------------------------------------------

PAGE_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".text"}
MEDIA_FOLDERS = {"images", "videos", "audio"}  # where scrapyer puts downloaded media


def find_pages(roots: list[Path], result: ScrapeResult) -> list[Path]:
    """Every page file under `roots` (sorted), counting what is skipped and why."""
    pages = []
    for root in roots:
        if not root.exists():
            raise MtnsailsError(f"{root}: no such directory")
        if root.is_file():
            pages.append(root)
            continue
        inside = root.resolve()
        for folder, subfolders, files in os.walk(root):  # does not follow folder symlinks
            for name in [d for d in subfolders if d.lower() in MEDIA_FOLDERS or d.startswith(".")]:
                subfolders.remove(name)
                if name.startswith("."):
                    continue  # hidden (.git): not counted, not even walked
                skipped = sum(len(f) for _, _, f in os.walk(Path(folder, name)))
                if skipped:
                    result.skipped[f"media in {name}/"] += skipped
            subfolders.sort()
            for name in sorted(files):
                path = Path(folder, name)
                if name.startswith("."):
                    continue
                if path.is_symlink() and not path.resolve().is_relative_to(inside):
                    # a link out of the crawl would put other files' text into the training data
                    print(f"note: {path}: links to {os.path.realpath(path)}, outside {root}; skipped", file=sys.stderr)
                    result.skipped["links outside the input folder"] += 1
                elif path.suffix.lower() in PAGE_SUFFIXES:
                    pages.append(path)
                else:
                    result.skipped[f"not a page ({path.suffix.lower() or 'no extension'})"] += 1
    if not pages:
        skipped = ", ".join(f"{n} {why}" for why, n in result.skipped.most_common()) or "nothing"
        raise MtnsailsError(
            f"{', '.join(map(str, roots))}: no text pages "
            f"({', '.join(sorted(PAGE_SUFFIXES))}) found; skipped: {skipped}"
        )
    return pages


def read_page(path: Path, settings: ScrapedSettings, result: ScrapeResult) -> str | None:
    """The file's text, or None (counted in `result.skipped`) when it is no usable page."""
    size = path.stat().st_size
    if size == 0:
        result.skipped["empty"] += 1
        return None
    if size > settings.max_file_bytes:
        result.skipped[f"larger than {settings.max_file_bytes} bytes"] += 1
        return None
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        result.skipped["binary"] += 1
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        print(
            f"warning: {path}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at offset "
            f"{error.start}); skipped, save it as UTF-8 to use it",
            file=sys.stderr,
        )
        result.skipped["not UTF-8"] += 1
        return None
    if not text.strip():
        result.skipped["empty"] += 1
        return None
    return text


# -- lines ------------------------------------------------------------------------------------

HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*$")
ITEM = re.compile(r"^[•·▪◦‣]\s*")
# Characters that attach to the word before them when two lines are joined.
ATTACHES_LEFT = ".,;:!?)]}%"
# A default-mode line ending with one of these words continues on the next line.
CONTINUES = set(
    "a an the of to and or but with in for on by from as at is are was were be "
    "that which this these your our their its than into via see use using call "
    "run set if when like such".split()
)
NAVIGATION = {
    "home",
    "next",
    "previous",
    "prev",
    "back",
    "back to top",
    "skip to content",
    "skip to main content",
    "menu",
    "search",
    "toggle navigation",
    "table of contents",
    "contents",
    "share",
    "tweet",
    "print",
    "log in",
    "login",
    "sign in",
    "sign up",
    "subscribe",
    "edit this page",
    "edit on github",
    "top",
    "close",
    "more",
    "read more",
}
BANNERS = re.compile(
    r"\b(?:cookies?\b.*\b(?:use|accept|consent|policy|settings|preferences|agree)"
    r"|(?:use|accept|consent to|allow)\b.*\bcookies"
    r"|enable javascript|javascript (?:is )?(?:disabled|required|must be enabled)"
    r"|terms of (?:use|service)|privacy policy|all rights reserved|copyright (?:\(c\) )?\d{4})"
    r"|©",
    re.IGNORECASE,
)


@dataclass
class Line:
    """One logical line of a page, with what it is."""

    kind: str  # "heading", "prose", "item", "blank" or "other" (not a sentence: navigation)
    text: str
    level: int = 0  # heading level, 1 = page title


def normalise(text: str) -> str:
    """NFC, no control or zero-width characters, non-breaking spaces as spaces."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = re.sub(r"[\u200b-\u200d\u2060\ufeff]", "", text)
    text = re.sub(r"[^\S\n]+", " ", text)  # every run of spaces, tabs, nbsp: one space
    return re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", text)


def is_prose(text: str) -> bool:
    """C4's line rule: a sentence ends in terminal punctuation and has at least 3 words."""
    return bool(ENDS_SENTENCE.search(text)) and len(text.split()) >= 3


def join_text(left: str, right: str) -> str:
    """Join two pieces of one sentence, with a space unless punctuation attaches them."""
    if not left:
        return right
    if right[0] in ATTACHES_LEFT or left[-1] in "([{/":
        return left + right
    return f"{left} {right}"


def continues(left: str, right: str) -> bool:
    """Does default-mode line `right` continue the sentence of line `left`?"""
    if ENDS_SENTENCE.search(left):
        return False
    last_word = left.split()[-1].lower()
    return right[0].islower() or right[0] in ATTACHES_LEFT or left[-1] in ",;:([-–/" or last_word in CONTINUES


def page_lines(text: str, suffix: str) -> list[Line]:
    """A page's logical lines (sentences rejoined): `#` headings, `• ` items, text, blanks."""
    if suffix in (".html", ".htm"):
        text = html_to_text(text)
    elif suffix in (".md", ".markdown"):
        text = markdown_to_text(text)
    raw = normalise(text).split("\n")
    structured = any(HEADING.match(line.strip()) or ITEM.match(line.strip()) for line in raw)
    lines: list[Line] = []
    for indented, line in ((line[:1] == " ", line.strip()) for line in raw):
        heading = HEADING.match(line)
        if not line:
            lines.append(Line("blank", ""))
        elif heading:
            lines.append(Line("heading", clean_heading(heading.group(2)), len(heading.group(1))))
        elif ITEM.match(line):
            lines.append(Line("item", ITEM.sub("", line)))
        elif lines and (
            (lines[-1].kind == "text" and (structured or continues(lines[-1].text, line)))
            or (lines[-1].kind == "item" and indented)
        ):  # a list item's next line
            lines[-1].text = join_text(lines[-1].text, line)
        else:
            lines.append(Line("text", line))
    return lines


def looks_like_prose(text: str) -> bool:
    """A sentence, or a long line with sentences in it (chunks() drops its unfinished tail)."""
    return is_prose(text) or (len(text.split()) > 12 and bool(SENTENCE_BREAK.search(text)))


def heading_like(text: str) -> bool:
    """Short, capitalised and not a navigation word: could be a heading."""
    return len(text.split()) <= 12 and text[0].isupper() and text.lower() not in NAVIGATION


def classify(lines: list[Line]) -> list[Line]:
    """Text lines become "prose", or, when not a sentence, a heading or "other" (navigation
    leftovers, dropped later). Without `#` headings (scrapyer's default mode) a heading is a
    short line followed by prose (level 2), or by such a heading (level 1: the page title, as in
    "Python Lists" / "Overview" / "A list is ...")."""
    content = [line for line in lines if line.kind != "blank"]
    structured = any(line.kind in ("heading", "item") for line in content)
    for index in reversed(range(len(content))):  # a line's kind depends on the next one's
        line = content[index]
        if line.kind != "text":
            continue
        following = content[index + 1] if index + 1 < len(content) else Line("blank", "")
        if looks_like_prose(line.text):
            line.kind = "prose"
        elif line.text.endswith(":") and following.kind == "item":
            line.kind = "prose"  # "Lists support:" introduces the items that follow
        elif (
            not structured and heading_like(line.text) and (following.kind in ("prose", "item") or following.level == 2)
        ):
            line.kind = "heading"
            line.level = 2 if following.kind in ("prose", "item") else 1
        else:
            line.kind = "other"
    headings = [line for line in content if line.kind == "heading"]
    if headings and not any(line.level == 1 for line in headings):
        headings[0].level = 1  # the first heading is the page title
    return lines


def clean_heading(text: str) -> str:
    """'2.1 Creating lists ¶' -> 'Creating lists'."""
    text = re.sub(r"^(?:\d+(?:\.\d+)*\.?|[IVX]+\.)\s+", "", text)
    return text.strip(" #¶§:|-–—").strip()


def line_key(text: str) -> str:
    """Lower-case words only: the form lines and answers are compared in."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def boilerplate_candidates(lines: list[Line]) -> Iterator[Line]:
    """Text and item lines, except short ones directly followed by prose (headings)."""
    content = [line for line in lines if line.kind != "blank"]
    for index, line in enumerate(content):
        following = content[index + 1] if index + 1 < len(content) else None
        if line.kind == "item" or (
            line.kind == "text"
            and (
                looks_like_prose(line.text)
                or following is None
                or following.kind != "text"
                or not looks_like_prose(following.text)
            )
        ):
            yield line


def tidy(lines: list[Line], result: ScrapeResult) -> list[Line]:
    """Drop navigation leftovers ("other") and prose repeated within the page."""
    kept, seen = [], set()
    for line in lines:
        key = line_key(line.text)
        if line.kind == "other":
            result.dropped_lines["navigation or fragment"] += 1
        elif line.kind in ("prose", "item") and key in seen:
            result.dropped_lines["repeated within a page"] += 1
        else:
            kept.append(line)
            seen.add(key)
    return kept


# -- sections and chunks ----------------------------------------------------------------------


@dataclass
class Section:
    """A page's text under one heading."""

    title: str  # the page title ("" if the page has none)
    heading: str  # the section's own heading (the title for text right under it)
    paragraphs: list[str] = field(default_factory=list)


def sections_of(lines: list[Line]) -> list[Section]:
    """Split a cleaned page at its headings; list items join the sentence that introduces them."""
    title = next((line.text for line in lines if line.kind == "heading" and line.level == 1), "")
    title = title or next((line.text for line in lines if line.kind == "heading"), "")
    sections: list[Section] = []
    current = Section(title, "")
    items: list[str] = []

    def flush_items() -> None:
        """Pending list items become a paragraph, end the sentence that introduces them, or
        (a list of phrases under its heading, such as principles or steps) become a sentence
        each; lists of single words (tags, menus) go."""
        if not items:
            return
        if all(is_prose(item) for item in items):
            current.paragraphs.append(" ".join(items))
        elif current.paragraphs and current.paragraphs[-1].endswith(":"):
            listed = "; ".join(item.rstrip(".;,") for item in items)
            current.paragraphs[-1] = f"{current.paragraphs[-1]} {listed}."
        elif 2 * sum(len(item.split()) > 1 for item in items) >= len(items):
            current.paragraphs.append(
                " ".join(item if ENDS_SENTENCE.search(item) else item.rstrip(";,") + "." for item in items)
            )
        items.clear()

    for line in lines:
        if line.kind == "heading":
            flush_items()
            sections.append(current)
            current = Section(title, line.text)
        elif line.kind == "prose":
            flush_items()
            current.paragraphs.append(line.text)
        elif line.kind == "item":
            items.append(line.text)
    flush_items()
    sections.append(current)
    return [s for s in sections if s.paragraphs]


def chunks(paragraphs: list[str], settings: ScrapedSettings, result: ScrapeResult) -> list[str]:
    """Answers of whole sentences, each at most `chunk_words` words and of similar sizes.

    A sentence longer than `chunk_words` stands alone (up to `max_sentence_words`; longer ones
    are run-on text and dropped). A trailing fragment without a sentence end is dropped.
    """
    units: list[str] = []
    for paragraph in paragraphs:
        for sentence in sentences(paragraph):
            words = len(sentence.split())
            if words > settings.max_sentence_words:
                result.dropped_passages[f"run-on text over {settings.max_sentence_words} words"] += 1
            elif not ENDS_SENTENCE.search(sentence):
                result.dropped_passages["unfinished sentence"] += 1
            else:
                units.append(sentence)
    total = sum(len(u.split()) for u in units)
    if not total:
        return []
    limit = settings.chunk_words
    target = total / -(-total // limit)  # equal shares of ceil(total / limit) chunks
    answers, current, count = [], [], 0
    for unit in units:
        words = len(unit.split())
        if current and (count + words > limit or count >= target):
            answers.append(" ".join(current))
            current, count = [], 0
        current.append(unit)
        count += words
    answers.append(" ".join(current))
    return answers


# -- questions --------------------------------------------------------------------------------

SUBJECT = re.compile(
    r"^((?:[Aa]n?|[Tt]he)\s+)?([\w+#.-]+(?:\s+[\w+#.-]+){0,4}?)\s+"
    r"(?:is|are|was|were|means|refers to)\s"
)


def section_topic(section: Section) -> str:
    """The heading, else the page title, else the subject of the first sentence ("A list is
    ..." -> "a list"); "" when the section has none (it is then skipped)."""
    if section.heading or section.title:
        return section.heading or section.title
    match = SUBJECT.match(section.paragraphs[0])
    return f"{(match.group(1) or '').lower()}{match.group(2)}" if match else ""


# -- the processor ----------------------------------------------------------------------------


def check_output_path(output: Path, roots: list[Path], append: bool, overwrite: bool) -> None:
    """Raise MtnsailsError when writing `output` would lose or corrupt data: an existing file
    without `append`/`overwrite`, a folder, or a path among the input pages."""
    if append and overwrite:
        raise MtnsailsError("--append and --overwrite exclude each other: choose one")
    if output.is_dir():
        raise MtnsailsError(f"{output}: is a directory; --output must be a .json or .jsonl file")
    target = output.resolve()
    for root in roots:
        source = root.resolve()
        if target == source or (source.is_dir() and target.is_relative_to(source)):
            raise MtnsailsError(
                f"{output}: lies inside the input {root}; write it elsewhere "
                "(it would replace a page or be read as one next time)"
            )
    if output.exists() and not (append or overwrite):
        raise MtnsailsError(f"{output}: already exists; pass --append to add to it or --overwrite to replace it")


class ScrapedContentProcessor:
    """Turns folders of scraped pages into quality-checked question/answer pairs.

    >>> processor = ScrapedContentProcessor(ScrapedSettings(chunk_words=80))
    >>> result = processor.process(["scraped_site"])          # doctest: +SKIP
    >>> result.conversations[0]                                # doctest: +SKIP
    {'input': 'What are Python lists?', 'output': 'A list is ...', 'source': 'content_1f...txt'}
    """

    def __init__(self, settings: ScrapedSettings | None = None) -> None:
        self.settings = settings or ScrapedSettings()

    def process(self, roots: list[str | os.PathLike], existing: list[dict] | None = None) -> ScrapeResult:
        """Read every page under `roots` and return the pairs (not yet written anywhere).

        `existing` conversations (an output file being appended to) are never repeated: their
        answers count as duplicates and their questions are not reused.
        """
        result = ScrapeResult()
        roots = [Path(root) for root in roots]
        paths = find_pages(roots, result)
        pages: dict[Path, list[Line]] = {}
        first_with: dict[bytes, Path] = {}  # a page's text digest -> the first page that had it
        for path in paths:
            text = read_page(path, self.settings, result)
            if text is None:
                continue
            digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
            if digest in first_with:  # a mirror or an alias: read once, or its lines look like boilerplate
                print(f"note: {path}: same text as {first_with[digest]}; read once", file=sys.stderr)
                result.skipped["same text as another page"] += 1
                continue
            first_with[digest] = path
            result.files_read += 1
            pages[path] = page_lines(text, path.suffix.lower())
        self._drop_boilerplate(pages, result)
        pairs = []
        for path, lines in pages.items():
            lines = tidy(classify(lines), result)
            shown = next((str(path.relative_to(r)) for r in roots if path.is_relative_to(r)), path.name)
            for section in sections_of(lines):
                result.sections += 1
                pairs += [(section, answer, shown) for answer in chunks(section.paragraphs, self.settings, result)]
        cases = WordCases(answer for _, answer, _ in pairs)
        result.conversations = self._questions_and_filters(pairs, existing or [], cases, result)
        return result

    def process_to_file(
        self, roots: list[str | os.PathLike], output: str | os.PathLike, append: bool = False, overwrite: bool = False
    ) -> ScrapeResult:
        """`process`, then write the pairs atomically (JSON, or JSON Lines for `.jsonl`).

        With `append`, the pairs are added to `output`'s conversations without duplicates; an
        existing `output` is replaced only with `overwrite`. `output` may not lie among the
        input pages (it would overwrite a page, or be read as one by the next run).
        """
        from mtnsails.data.handler import ConversationDataHandler
        from mtnsails.data.records import require_output_directory, write_conversations

        output = Path(output)
        check_output_path(output, [Path(root) for root in roots], append, overwrite)
        require_output_directory(output)
        existing = []
        if append and output.exists():
            existing = ConversationDataHandler.from_file(output).conversations
        result = self.process(roots, existing)
        if not result.conversations and not existing:
            raise MtnsailsError(
                f"no question/answer pairs could be made from "
                f"{result.files_read} file(s): " + "; ".join(result.format_summary().splitlines())
            )
        write_conversations(output, existing + result.conversations)
        return result

    # -- steps ----------------------------------------------------------------------------

    def _drop_boilerplate(self, pages: dict[Path, list[Line]], result: ScrapeResult) -> None:
        """Remove banners, and lines found on many pages of one folder (one crawl): menus,
        footers, "Edit this page". Headings are structure, never boilerplate: neither `#` lines
        nor short lines that prose follows ("Overview" on every page of a manual)."""
        by_folder: dict[Path, list[list[Line]]] = {}
        for path, lines in pages.items():
            by_folder.setdefault(path.parent, []).append(lines)
        for folder_pages in by_folder.values():
            seen_on = Counter()
            candidates = [list(boilerplate_candidates(lines)) for lines in folder_pages]
            for page_candidates in candidates:
                seen_on.update({line_key(line.text) for line in page_candidates})
            needed = max(
                2, min(self.settings.boilerplate_min_pages, self.settings.boilerplate_fraction * len(folder_pages))
            )
            boilerplate = {key for key, pages_with in seen_on.items() if pages_with >= needed}
            for lines, page_candidates in zip(folder_pages, candidates):
                candidate_ids = {id(line) for line in page_candidates}
                kept = []
                for line in lines:
                    if line.kind in ("text", "item") and BANNERS.search(line.text):
                        result.dropped_lines["cookie/terms banner"] += 1
                    elif id(line) in candidate_ids and line_key(line.text) in boilerplate:
                        result.dropped_lines["boilerplate repeated across pages"] += 1
                    else:
                        kept.append(line)
                lines[:] = kept

    def _questions_and_filters(
        self, pairs: list[tuple[Section, str, str]], existing: list[dict], cases: WordCases, result: ScrapeResult
    ) -> list[dict]:
        """Drop answers that copy an earlier one or one of `existing` (exactly or nearly), ask
        each remaining answer its question, and keep, unless `keep_all`, the pairs that pass
        every quality rule."""
        from mtnsails.quality.dedup import find_copies
        from mtnsails.quality.validator import DataQualityValidator

        validator = DataQualityValidator()
        with_topic = []
        for section, answer, source in pairs:
            topic = section_topic(section)
            if topic:
                with_topic.append((topic, section.title, answer, source))
            else:
                result.dropped_passages["no heading or topic"] += 1
        result.pairs_made = len(with_topic)
        answers = [c["output"] for c in existing] + [answer for _, _, answer, _ in with_topic]
        keys = [line_key(answer) for answer in answers]
        copies = find_copies(keys, [key.split() for key in keys], validator.config)
        used = {conversation["input"] for conversation in existing}
        follow_ups: dict[str, object] = {}
        kept = []
        for index, (topic, title, answer, source) in enumerate(with_topic, start=len(existing)):
            if index in copies:
                result.duplicates += 1
                continue
            question = self._question(topic, title, cases, used, follow_ups)
            used.add(question)
            conversation = {"input": question, "output": answer, "source": source}
            codes = {issue.code for issue in validator.check(conversation)}
            if codes and not self.settings.keep_all:
                result.quality_removed.update(codes)
            else:
                kept.append(conversation)
        return kept

    def _question(self, topic: str, title: str, cases: WordCases, used: set[str], follow_ups: dict[str, object]) -> str:
        """The topic's question; when taken, the next of its follow-up questions."""
        if title and re.search(r"\s(?:it|them)$", topic, re.IGNORECASE):
            topic = f"{topic.rsplit(' ', 1)[0]} {title}"  # "Activating it" under its title
        phrased = cases.phrase(topic)
        if topic.lower() in GENERIC and title and title != topic:
            phrased = f"{cases.phrase(title)} ({topic.lower()})"  # "Python sets (overview)"
        if self.settings.prompt_template:
            question = self.settings.prompt_template.replace("{topic}", phrased)
        else:
            question = natural_question(topic, title, cases)
        while question in used:
            question = next(follow_ups.setdefault(phrased, follow_up_questions(phrased)))
        return question
