"""ScrapedContentProcessor and process_scraped_content.py on a realistic scrapyer output tree.

The tree mixes what users really feed in: a crawl in scrapyer's default mode (every text node on
its own line, menus, a cookie banner and a footer on every page), a crawl in
`--preserve-structure` mode, an `images/` folder, an HTML page, a Latin-1 file, an empty file and
a huge one-line file whose text runs on without a sentence end.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT, read_only_directory

from mtnsails.core.text_rules import sentences
from mtnsails.data.html_text import html_to_text
from mtnsails.data.questions import WordCases, natural_question
from mtnsails.data.scraped import (
    ScrapedContentProcessor,
    ScrapedSettings,
    ScrapeResult,
    chunks,
    classify,
    page_lines,
    sections_of,
)
from mtnsails.quality.validator import DataQualityValidator

SCRIPT = REPO_ROOT / "process_scraped_content.py"

NAV = "Home\nTutorials\nBlog\nPyGuide\n"
FOOTER = (
    "\nPyGuide is a free tutorial site written by volunteers since 2015.\n"
    "We use cookies to improve your experience. By using this site you accept our cookie policy.\n"
    "Copyright 2024 PyGuide. All rights reserved.\nPrevious\nNext"
)
DEFAULT_PAGES = [
    """Python Lists
A list is an ordered collection of items that can hold values of any type. Lists are written with square brackets, and the items are separated by commas.
You can add an item to the end of a list with the
append
method, and take one out again with
remove
.
Creating a list
To create a list, put comma-separated values between square brackets. An empty list is written as two brackets with nothing between them. You can also call the
list()
function on any iterable, such as a string or a range, to build a list from its items.
Slicing
A slice selects part of a list by giving a start and an end index separated by a colon. The start index is included and the end index is not. Leaving out the start means the beginning of the list, and leaving out the end means its last item. A negative index counts from the end, so the slice with minus two takes the last two items. Slicing always returns a new list and never changes the original one. You can also give a step as a third number, which takes every second or third item. A step of minus one returns the list reversed. Slices work the same way on strings and tuples, which makes them a very useful tool to learn early.""",
    """Python Dictionaries
A dictionary stores pairs of keys and values, and finds the value for a key very quickly. Keys must be immutable objects such as strings, numbers or tuples.
How to add a key
Assign a value to a new key with square brackets, and the dictionary grows by one entry. If the key already exists, its old value is replaced by the new one.
Iterating over a dictionary
A for loop over a dictionary visits its keys in the order they were inserted. The
items()
method returns the keys together with their values, which is handy when you need both at once.""",
    """Python Functions
A function is a named block of code that runs when it is called. You define one with the
def
keyword, followed by the name, the parameters in parentheses and a colon.
Default arguments
A parameter can have a default value that is used when the caller leaves it out. Never use a mutable object such as a list as a default value, because the same object is shared by every call.""",
    """Python Sets
Overview
A set is an unordered collection without duplicate items. Sets are written with curly braces, and adding an item that is already there changes nothing.
Examples
The letters of a word form a set when you pass the word to the set function. Two sets can be combined with the union operator, written as a vertical bar.""",
    """Python Loops
Loops repeat a block of code. A for loop walks over the items of a sequence, while a while loop repeats as long as its condition stays true.
Installing Python
Download the installer from the official website and run it. On Linux, your package manager usually offers a recent version as well.""",
]
STRUCTURED_PAGES = [
    """# Virtual Environments

A virtual environment keeps the packages of one project apart from those of every other project. Each environment has its own interpreter and its own site-packages folder.

## Creating a virtual environment

Run the venv module with the name of the new folder, for example python -m venv .venv in the project directory. The command creates the folder with a fresh interpreter inside it.

## Activating it

Activation puts the environment's interpreter first on your path. The activation scripts support:
• bash and zsh
• fish
• PowerShell

Edit this page on GitHub.""",
    """# Package Management

The pip tool installs packages from the Python Package Index into the active environment. It resolves the dependencies of each package and installs them too.

## How pip resolves dependencies

Pip reads the requirements of every package it installs and picks versions that satisfy all of them. When no such set of versions exists, it stops with an error that names the conflicting packages.

## Requirements files

A requirements file lists one package per line, optionally with a version. Running pip install with the -r option installs everything the file lists.

Edit this page on GitHub.""",
    """# Testing with pytest

Pytest finds test functions by their names and runs them. A test passes when it finishes without an exception, and a plain assert statement is all you need to check a result.

## Fixtures

A fixture prepares something a test needs, such as a temporary folder or a database connection. Tests ask for a fixture by naming it as a parameter.

Edit this page on GitHub.""",
]
HTML = """<!DOCTYPE html><html><head><title>Git Basics</title><style>body{color:red}</style>
<script>var tracking = "Tell me about javascript tracking.";</script></head>
<body><header><nav><a href="/">Home</a> <a href="/docs">Docs</a></nav></header>
<main><h1>Git Basics</h1>
<p>Git records the history of a project as a series of commits. Each commit is a snapshot of every tracked file, together with a message that explains the change.</p>
<h2>Branches</h2>
<p>A branch is a movable pointer to a commit. Creating a branch is cheap, so it is common to start a new one for every feature or fix &amp; merge it back when it is done.</p>
</main><footer><p>Copyright 2024 Example Corp. All rights reserved.</p></footer></body></html>"""
RSS = (
    "Version 2.0 is out\nVersion 2.0 exports models twice as fast and adds a chat command "
    "that remembers the conversation.\n\nSecurity update\nAll users should upgrade to "
    "version 2.0.1, which fixes a bug in how log file paths were checked."
)
SOLAR = (
    "The solar system is the Sun together with everything that orbits it. Eight planets travel "
    "around the Sun on nearly circular paths. Mercury is the smallest planet and the closest one "
    "to the Sun. Venus is wrapped in thick clouds that trap heat, which makes it the hottest "
    "planet. Earth is the only planet known to support life. Mars is a cold desert world with "
    "the tallest volcano in the solar system. Jupiter is the largest planet, a gas giant with a "
    "storm bigger than the Earth. Saturn is famous for its bright rings made of ice and rock. "
    "Uranus spins on its side, probably because of an ancient collision. Neptune has the "
    "strongest winds measured on any planet. Beyond Neptune lies the Kuiper belt, a region of "
    "icy bodies that includes the dwarf planet Pluto. Comets come from even farther away and "
    "grow bright tails when they approach the Sun. "
)


def content_name(text: str) -> str:
    return f"content_{hashlib.sha256(text.encode()).hexdigest()[:32]}.txt"


def build_scraped_site(root: Path) -> Path:
    """A crawl in default mode, a crawl in preserve-structure mode, and files users add."""
    crawl = root / "site" / "crawl_default"
    crawl.mkdir(parents=True)
    for page in DEFAULT_PAGES:
        text = NAV + page + FOOTER
        (crawl / content_name(text)).write_text(text, encoding="utf-8")
    (crawl / "images").mkdir()
    (crawl / "images" / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    structured = root / "site" / "docs" / "crawl_structured"
    structured.mkdir(parents=True)
    for page in STRUCTURED_PAGES:
        (structured / content_name(page)).write_text(page, encoding="utf-8")
    feed = root / "site" / "news"  # an RSS feed: item titles and descriptions
    feed.mkdir()
    (feed / content_name(RSS)).write_text(RSS, encoding="utf-8")
    extra = root / "site" / "mine"
    extra.mkdir()
    (extra / "git.html").write_text(HTML, encoding="utf-8")
    (extra / "notes-latin1.txt").write_bytes("Caf\xe9 notes: na\xefve text.".encode("latin-1"))
    (extra / "empty.txt").write_text("")
    minified = " ".join(f"x{i}=f({i})" for i in range(30000))  # no sentence end anywhere
    (extra / "huge.txt").write_text(SOLAR + minified, encoding="utf-8")
    return root / "site"


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd or REPO_ROOT, timeout=120
    )


@pytest.fixture
def site(tmp_path) -> Path:
    return build_scraped_site(tmp_path)


@pytest.fixture
def pairs(site) -> list[dict]:
    return ScrapedContentProcessor(ScrapedSettings(chunk_words=40)).process([site]).conversations


def by_question(pairs: list[dict]) -> dict[str, str]:
    return {pair["input"]: pair["output"] for pair in pairs}


# -- what comes out -----------------------------------------------------------------------------


def test_answers_are_complete_passages_within_the_chunk_size(pairs):
    assert len(pairs) >= 20
    for pair in pairs:
        answer = pair["output"]
        assert len(answer.split()) <= 40, answer
        assert answer[0].isupper() and answer[-1] in ".!?", answer
        assert pair["input"] not in answer


def test_sentences_split_over_lines_are_rejoined(pairs):
    answers = " ".join(pair["output"] for pair in pairs)
    assert "take one out again with remove." in answers
    assert "You define one with the def keyword, followed by" in answers
    assert "The items() method returns" in answers


def test_questions_come_from_headings_and_fit_them(pairs):
    questions = by_question(pairs)
    expected = {
        "What are Python lists?": "A list is an ordered collection",  # page title (default mode)
        "How do I create a list?": "To create a list",  # "Creating a list"
        "Explain slicing.": "A slice selects part of a list",  # "Slicing"
        "How do I add a key?": "Assign a value to a new key",  # "How to add a key"
        "How do I install Python?": "Download the installer",  # "Installing Python"
        "What are virtual environments?": "A virtual environment keeps",  # "# Virtual Environments"
        "Explain how pip resolves dependencies.": "Pip reads the requirements",
        "How do I activate virtual environments?": "Activation puts",  # "Activating it"
        "What are Git basics?": "Git records the history",  # <h1> of the HTML page
        "What is the solar system?": "The solar system is the Sun",  # no heading: the subject
        "Give me an overview of Python sets.": "A set is an unordered",  # title, then "Overview"
        "Can you give an example of Python sets?": "The letters of a word",
        'Tell me about "Version 2.0 is out".': "Version 2.0 exports",  # RSS item titles
        "What is a security update?": "All users should upgrade",  # its article added
    }
    for question, start in expected.items():
        assert questions[question].startswith(start), question
    # a section with several chunks asks a different question for each
    assert questions["Tell me more about slicing."].startswith("Leaving out the start")
    assert "What else should I know about slicing?" in questions
    # list items join the sentence that introduces them
    assert questions["How do I activate virtual environments?"].endswith(
        "The activation scripts support: bash and zsh; fish; PowerShell."
    )


def test_boilerplate_banners_navigation_and_markup_are_gone(pairs):
    text = json.dumps(pairs)
    for leftover in (
        "PyGuide",
        "cookie",
        "All rights reserved",
        "Edit this page",
        "Tutorials",
        "Previous",
        "tracking",
        "color:red",
        "Example Corp",
        "x1=f(1)",
        "Docs",
    ):
        assert leftover not in text, leftover
    assert "&amp;" not in text and "fix & merge" in text


def test_no_duplicates_and_every_pair_passes_the_quality_checks(pairs):
    assert len({pair["input"] for pair in pairs}) == len(pairs)
    assert len({pair["output"] for pair in pairs}) == len(pairs)
    report = DataQualityValidator().analyze(pairs)
    assert report.valid == report.total, report.format_text()


def test_questions_never_come_from_file_names(pairs):
    for pair in pairs:
        assert "content" not in pair["input"] and "huge" not in pair["input"]
    assert all(pair["source"].startswith(("crawl_default/", "docs/", "mine/", "news/")) for pair in pairs)


def test_the_summary_says_what_was_skipped_and_why(site):
    result = ScrapedContentProcessor(ScrapedSettings(chunk_words=40)).process([site])
    assert result.files_read == 11
    assert result.skipped == {"media in images/": 1, "empty": 1, "not UTF-8": 1}
    assert result.dropped_lines["boilerplate repeated across pages"] > 0
    assert result.dropped_lines["cookie/terms banner"] > 0
    assert result.dropped_passages == {"run-on text over 80 words": 1}
    summary = result.format_summary()
    assert "1 media in images/" in summary and f"pairs written: {len(result.conversations)}" in summary


# -- the script ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_script_writes_jsonl_appends_without_duplicates_and_the_output_trains(site, tmp_path, cli_here):
    output = tmp_path / "chat_data.jsonl"
    done = run_script(str(site), "--output", str(output), "--chunk-words", "60")
    assert done.returncode == 0, done.stderr
    assert "files skipped: 3" in done.stdout and "pairs written:" in done.stdout
    warnings = [line for line in done.stderr.splitlines() if line]
    assert len(warnings) == 1 and "notes-latin1.txt: not valid UTF-8" in warnings[0]
    first = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(first) >= 15

    (site / "mine" / "extra.md").write_text(
        "# Tuples\n\nA tuple is an ordered collection that cannot be changed after it is "
        "created. Tuples are written with parentheses instead of square brackets.\n\n"
        "```python\nt = (1, 2)\n```\n",
        encoding="utf-8",
    )
    again = run_script(str(site), "--output", str(output), "--chunk-words", "60", "--append", "--quiet")
    assert again.returncode == 0 and again.stdout == ""
    merged = [json.loads(line) for line in output.read_text().splitlines()]
    assert merged[: len(first)] == first
    assert [pair["input"] for pair in merged[len(first) :]] == ["What are tuples?"]

    model = tmp_path / "model"
    trained = cli_here(
        "train",
        "--data-file",
        str(output),
        "--model-name",
        "tiny",
        "--epochs",
        "1",
        "--output-dir",
        str(model),
        "--quiet",
    )
    assert trained.returncode == 0, trained.stderr
    assert (model / "mtnsails.json").exists()


def test_prompt_template_keep_all_and_original_question(site, tmp_path):
    output = tmp_path / "pairs.json"
    done = run_script(
        str(site), "--output", str(output), "--prompt-template", "Tell me about {topic}", "--keep-all", "--quiet"
    )
    assert done.returncode == 0, done.stderr
    questions = [pair["input"] for pair in json.loads(output.read_text())]
    assert {
        "Tell me about Python dictionaries",
        "Tell me about how to add a key",
        "Tell me about Python sets (overview)",
    } <= set(questions)
    assert "Tell me about activating virtual environments" in questions
    assert len(set(questions)) == len(questions)


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda tmp: [str(tmp / "missing"), "--output", str(tmp / "o.json")], "no such directory"),
        (lambda tmp: [str(tmp / "only_media"), "--output", str(tmp / "o.json")], "no text pages"),
        (lambda tmp: [str(tmp / "only_media"), "--output", str(tmp / "nope" / "o.json")], "does not exist"),
        (lambda tmp: [str(tmp / "only_media"), "--output", str(tmp / "o.json"), "--chunk-words", "3"], "at least 10"),
        (
            lambda tmp: [str(tmp / "only_media"), "--output", str(tmp / "o.json"), "--prompt-template", "Tell me"],
            "must contain {topic}",
        ),
        (
            lambda tmp: [str(tmp / "only_media"), "--output", str(tmp / "o.json"), "--append", "--overwrite"],
            "--append and --overwrite exclude each other",
        ),
        (
            lambda tmp: [str(tmp / "only_media"), "--output", str(tmp / "only_media")],
            "only_media: is a directory; --output must be a .json or .jsonl file",
        ),
    ],
)
def test_bad_input_gives_one_line_errors(tmp_path, make_args, message):
    (tmp_path / "only_media" / "images").mkdir(parents=True)
    (tmp_path / "only_media" / "images" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "only_media" / "logo.svg").write_text("<svg/>")
    done = run_script(*make_args(tmp_path))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "o.json").exists()


def test_an_existing_output_is_replaced_only_with_overwrite(site, tmp_path):
    output = tmp_path / "chat_data.json"
    output.write_text("[]\n")
    refused = run_script(str(site), "--output", str(output), "--quiet")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: {output}: already exists; pass --append to add to it or --overwrite to replace it"
    ]
    assert output.read_text() == "[]\n"
    replaced = run_script(str(site), "--output", str(output), "--overwrite", "--quiet")
    assert replaced.returncode == 0, replaced.stderr
    assert len(json.loads(output.read_text())) >= 15


@pytest.mark.parametrize("inside", ["an existing page", "new.json", "docs/pairs.jsonl"])
def test_an_output_among_the_input_pages_is_refused(site, inside):
    page = min((site / "crawl_default").glob("content_*.txt"))
    output = page if inside == "an existing page" else site / inside
    before = {path: path.read_bytes() for path in site.rglob("*") if path.is_file()}
    done = run_script(str(site), "--output", str(output), "--overwrite")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(f"error: {output}: lies inside the input {site}")
    assert {path: path.read_bytes() for path in site.rglob("*") if path.is_file()} == before


def test_nothing_usable_is_an_error_not_an_empty_file(tmp_path):
    (tmp_path / "pages").mkdir()
    (tmp_path / "pages" / "menu.txt").write_text("Home\nAbout\nContact", encoding="utf-8")
    done = run_script(str(tmp_path / "pages"), "--output", str(tmp_path / "o.json"))
    assert done.returncode == 2 and "no question/answer pairs" in done.stderr
    # the summary reads as text on the error's one line, not as a Python repr
    assert "file(s): files read: 1; " in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "o.json").exists()


def test_a_read_only_output_folder_is_a_one_line_error(site, tmp_path):
    output = read_only_directory(tmp_path) / "pairs.json"
    done = run_script(str(site), "--output", str(output))
    assert done.returncode == 2, done.stderr  # found before any page is read
    assert done.stderr.splitlines() == [f"error: {output}: cannot write into {output.parent} (Permission denied)"]
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_file_links_out_of_the_input_folder_are_skipped_with_a_note(tmp_path, capsys):
    secret = tmp_path / "private" / "notes.txt"
    secret.parent.mkdir()
    secret.write_text("# Private notes\nMy bank password is written in this private file.\n")
    crawl = tmp_path / "crawl"
    crawl.mkdir()
    (crawl / "page.txt").write_text("# Tents\nA tent keeps the rain off while you sleep outside.\n")
    (crawl / "inside.txt").symlink_to(crawl / "page.txt")  # a link within the crawl is read
    (crawl / "notes.txt").symlink_to(secret)
    result = ScrapedContentProcessor().process([crawl])
    assert "password" not in json.dumps(result.conversations)
    assert result.skipped == {"links outside the input folder": 1, "same text as another page": 1}
    assert result.files_read == 1  # a link within the crawl is the same page: read once
    assert capsys.readouterr().err.splitlines() == [
        f"note: {crawl / 'notes.txt'}: links to {secret}, outside {crawl}; skipped",
        f"note: {crawl / 'page.txt'}: same text as {crawl / 'inside.txt'}; read once",
    ]


def test_a_list_under_a_heading_belongs_to_its_answer():
    page = (
        "# Leave No Trace\n## The seven principles\nThere are seven of them.\n"
        "• Plan ahead and prepare\n• Travel and camp on durable surfaces\n"
        "• Dispose of waste properly\n• Leave what you find\n• Minimize campfire impacts\n"
        "• Respect wildlife\n• Be considerate of other visitors\n"
        "## Tags\n• hiking\n• camping\n"
    )
    sections = sections_of(classify(page_lines(page, ".txt")))
    assert [(section.heading, section.paragraphs) for section in sections] == [
        (
            "The seven principles",
            [
                "There are seven of them.",
                "Plan ahead and prepare. Travel and camp on durable surfaces. Dispose of waste "
                "properly. Leave what you find. Minimize campfire impacts. Respect wildlife. "
                "Be considerate of other visitors.",
            ],
        )
    ]  # one-word tags are no answer


# -- the pieces ---------------------------------------------------------------------------------


def test_sentences_respect_abbreviations_initials_and_decimals():
    text = "Use e.g. a list. J. Smith wrote it in 2.5 days! Does it work? Yes."
    assert sentences(text) == ["Use e.g. a list.", "J. Smith wrote it in 2.5 days!", "Does it work?", "Yes."]


def test_chunks_keep_an_overlong_sentence_whole_and_drop_run_on_text():
    settings = ScrapedSettings(chunk_words=10)
    result = ScrapeResult()
    long_sentence = " ".join(["word"] * 15) + "."
    run_on = " ".join(["x"] * 30) + "."
    answers = chunks(["Short one here.", long_sentence, run_on, "Another short one."], settings, result)
    assert answers == ["Short one here.", long_sentence, "Another short one."]
    assert result.dropped_passages == {"run-on text over 20 words": 1}


def test_chunks_are_balanced():
    sentence = "This sentence has exactly six words."
    answers = chunks([" ".join([sentence] * 7)], ScrapedSettings(chunk_words=30), ScrapeResult())
    assert [len(a.split()) for a in answers] == [24, 18]  # not 30 + 12


@pytest.mark.parametrize(
    "heading, question",
    [
        ("How to deploy a web app", "How do I deploy a web app?"),
        ("How caching works", "How does caching work?"),
        ("Configure the logger", "How do I configure the logger?"),
        ("Make a Request", "How do I make a request?"),
        ("Use cases", "What are use cases?"),
        ("Event loop", "How does the event loop work?"),
        ("Overview", "Give me an overview of Python lists."),
        ("Why use tuples?", "Why use tuples?"),
        ("Memory Management", "What is memory management?"),
        ("Status codes", "What are status codes?"),
    ],
)
def test_natural_questions(heading, question):
    cases = WordCases(["The event loop reads lists of memory and status codes from the Python API."])
    assert natural_question(heading, "Python Lists", cases) == question


@pytest.mark.parametrize(
    "heading, question",
    [
        ("Base Layer", "What is a base layer?"),  # the pages say "A base layer is ..."
        ("Security update", "What is a security update?"),  # no evidence: a countable head noun
        ("Ultralight Stove", "What is an ultralight stove?"),
        ("Hypothermia", "What is hypothermia?"),  # a single word: no article unproven
        ("Trail Running", "What is trail running?"),  # a gerund
        ("Water Treatment", "What is water treatment?"),  # an abstract head, never "a ..." here
        ("Rain Gear", "What is rain gear?"),  # a mass noun
    ],
)
def test_what_is_questions_get_their_article_where_english_needs_one(heading, question):
    cases = WordCases(
        [
            "A base layer is the clothing worn next to the skin. An ultralight "
            "stove saves weight, and water treatment, rain gear, hypothermia and "
            "trail running are covered later."
        ]
    )
    assert natural_question(heading, "Hiking", cases) == question


def test_html_text_keeps_headings_and_items_and_drops_page_furniture():
    html = (
        "<html><head><title>T</title><script>x()</script></head><body>"
        "<header><nav>Menu <a href=/>Home</a></header>"  # <nav> left open
        "<h2>Part</h2><ul><li>one</li><li>two</li></ul><p>Text &lt;here&gt;.</p>"
        "<footer>Foot</footer></body></html>"
    )
    lines = [line for line in html_to_text(html).splitlines() if line]
    assert lines == ["# T", "## Part", "• one", "• two", "Text <here>."]


def test_markdown_list_items_keep_their_wrapped_lines_and_code_is_dropped():
    markdown = (
        "# Tools\n\nThe kit includes:\n- a parser that reads\n  every file once\n"
        "- a writer\n\n    code_block()\n\n```\nmore_code()\n```\n"
    )
    [section] = sections_of(classify(page_lines(markdown, ".md")))
    assert section.heading == "Tools"
    assert section.paragraphs == ["The kit includes: a parser that reads every file once; a writer."]


def test_a_page_read_twice_counts_once_mirror_or_alias(site, tmp_path, capsys):
    structured = sorted(path for path in site.rglob("content_*.txt") if path.read_text().startswith("#"))
    first, other = structured[:2]
    processor = ScrapedContentProcessor(ScrapedSettings(chunk_words=40))

    def pairs_in(folder: Path, *pages: Path) -> list[tuple[str, str]]:
        folder.mkdir()
        for number, page in enumerate(pages):
            shutil.copy(page, folder / f"page{number}{page.suffix}")
        result = processor.process([folder])
        return sorted((pair["input"], pair["output"]) for pair in result.conversations), result

    alone, _ = pairs_in(tmp_path / "alone", first)
    assert alone  # the page makes pairs
    twice, result = pairs_in(tmp_path / "twice", first, first)
    (tmp_path / "twice" / "alias.txt").symlink_to(tmp_path / "twice" / "page0.txt")
    assert twice == alone and result.skipped == {"same text as another page": 1} and result.files_read == 1
    assert "page1.txt: same text as" in capsys.readouterr().err
    with_alias = processor.process([tmp_path / "twice"]).conversations
    assert sorted((pair["input"], pair["output"]) for pair in with_alias) == alone
    three, _ = pairs_in(tmp_path / "three", first, first, other)
    # every question of the page is still asked (a line both distinct pages share may go as boilerplate)
    assert {question for question, _ in alone} <= {question for question, _ in three} and len(three) > len(alone)
