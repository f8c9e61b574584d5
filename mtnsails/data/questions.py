"""Questions for scraped answers, phrased from their section headings.

"Installing Python" -> "How do I install Python?", "How caching works" -> "How does caching
work?", "Python Lists" -> "What are Python lists?" (sentence case learnt from the pages by
`WordCases`); follow-up questions keep a topic's later answers from repeating a question.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

from mtnsails.core.text_rules import ENDS_SENTENCE, sentences

DEFAULT_TEMPLATE = "Tell me about {topic}"  # the original processor's only question


# Headings "Install X" / "Installing X" become "How do I install X?".
VERBS = set(
    """activate add authenticate avoid build call catch change check choose clone commit
compile configure connect convert copy create customize deactivate deal debug declare define
delete deploy disable download edit enable export extend filter find fix format get handle import
initialize insert install iterate load log make manage measure merge migrate monitor move name
open optimize organize parse pass print profile publish query raise read register remove rename
run save schedule search select set share sort start structure test train troubleshoot update
upgrade upload use validate work write""".split()
)
DOUBLED = {"run", "get", "set", "debug", "log", "commit"}  # the verbs of VERBS that double


def gerund(verb: str) -> str:
    """The -ing form: "run" -> "running", "create" -> "creating"."""
    if verb in DOUBLED:
        return verb + verb[-1] + "ing"
    return (verb[:-1] if verb.endswith("e") and not verb.endswith("ee") else verb) + "ing"


GERUNDS = {gerund(verb): verb for verb in VERBS}
# Base forms that are nouns too ("Use cases", "Test results") count as a verb only before an
# object word: "Use a virtual environment" -> "How do I use a virtual environment?".
OBJECT_WORDS = {"the", "a", "an", "your", "this", "these", "it", "them", "my", "our", "up"}
UNAMBIGUOUS_VERBS = {
    "activate",
    "authenticate",
    "avoid",
    "choose",
    "configure",
    "connect",
    "convert",
    "create",
    "customize",
    "deactivate",
    "debug",
    "define",
    "delete",
    "deploy",
    "disable",
    "enable",
    "install",
    "initialize",
    "iterate",
    "migrate",
    "remove",
    "troubleshoot",
    "upgrade",
    "validate",
}
QUESTION_WORDS = {"how", "why", "what", "when", "where", "which", "who"}
AUXILIARIES = {
    "is",
    "are",
    "was",
    "were",
    "has",
    "have",
    "had",
    "will",
    "can",
    "could",
    "does",
    "do",
    "did",
    "should",
    "must",
}
# Section names that say nothing without the page title.
GENERIC = {
    "overview": "Give me an overview of {title}.",
    "introduction": "What is {title}?",
    "about": "What is {title}?",
    "description": "What is {title}?",
    "summary": "Summarize {title}.",
    "features": "What are the features of {title}?",
    "key features": "What are the features of {title}?",
    "installation": "How do I install {title}?",
    "usage": "How do I use {title}?",
    "getting started": "How do I get started with {title}?",
    "quick start": "How do I get started with {title}?",
    "examples": "Can you give an example of {title}?",
    "example": "Can you give an example of {title}?",
    "requirements": "What are the requirements for {title}?",
    "prerequisites": "What do I need before using {title}?",
    "configuration": "How do I configure {title}?",
    "limitations": "What are the limitations of {title}?",
    "troubleshooting": "How do I troubleshoot {title}?",
    "faq": "What are common questions about {title}?",
    "history": "What is the history of {title}?",
    "background": "What is the background of {title}?",
    "notes": "What should I note about {title}?",
}
HOW_IT_WORKS = {
    "algorithm",
    "process",
    "pipeline",
    "protocol",
    "mechanism",
    "loop",
    "lifecycle",
    "engine",
    "scheduler",
    "cache",
    "compiler",
    "interpreter",
    "collector",
}
SINGULAR_S = {
    "physics",
    "mathematics",
    "analytics",
    "statistics",
    "economics",
    "politics",
    "ethics",
    "graphics",
    "electronics",
    "news",
    "series",
    "species",
    "status",
    "class",
    "process",
    "access",
    "address",
    "business",
    "success",
    "progress",
    "bus",
    "gas",
    "canvas",
    "alias",
    "basis",
    "analysis",
    "axis",
    "css",
    "dns",
    "os",
}
COMMON_NOUN_ENDINGS = ("ing", "tion", "sion", "ment", "ness", "ity", "ance", "ence")
# "What is ...?" of a singular noun: "a base layer" needs its article, "hypothermia" does not.
DETERMINERS = {
    "a",
    "an",
    "the",
    "this",
    "that",
    "my",
    "your",
    "our",
    "their",
    "its",
    "his",
    "her",
    "each",
    "every",
    "some",
    "any",
    "no",
}
MASS_NOUNS = {
    "water",
    "food",
    "gear",
    "clothing",
    "equipment",
    "software",
    "hardware",
    "information",
    "data",
    "advice",
    "weather",
    "research",
    "music",
    "money",
    "time",
    "health",
    "safety",
    "energy",
    "power",
    "traffic",
    "knowledge",
    "feedback",
    "content",
    "code",
    "documentation",
    "rain",
    "snow",
    "ice",
    "fire",
    "light",
    "aid",
    "security",
    "hypothermia",
    "nutrition",
    "hydration",
    "navigation",
    "shelter",
}
UNCOUNTABLE_ENDINGS = ("ing", "ness", "ism", "ics", "ship", "ware")  # gerunds, qualities, fields
# Heads with these endings are countable ("a function") or not ("validation"): an article only
# where the pages use one.
ABSTRACT_ENDINGS = ("tion", "sion", "ity", "ment", "ance", "ence")
WORD = re.compile(r"[A-Za-z][\w'-]*")


class WordCases:
    """How the pages write each word mid-sentence, to phrase headings as the pages would:
    "Python Lists" -> "Python lists" (the text says "lists" but "Python")."""

    def __init__(self, texts: Iterable[str]) -> None:
        """Count lower-case and capitalised uses of each word in `texts` (the answers)."""
        self.lower: Counter = Counter()
        self.capital: Counter = Counter()
        self.articles: Counter = Counter()  # ("a" or "an", the next word) -> uses
        for text in texts:
            for sentence in sentences(text):
                words = WORD.findall(sentence)
                for previous, word in zip(words, words[1:]):  # a first word proves no case
                    if word.islower():
                        self.lower[word] += 1
                    elif word[0].isupper() and word[1:].islower():
                        self.capital[word.lower()] += 1
                    if previous.lower() in ("a", "an"):
                        self.articles[previous.lower(), word.lower()] += 1

    def phrase(self, heading: str) -> str:
        """Sentence case for a Title Case heading, keeping the names the pages capitalise."""
        words = heading.split()
        for index, word in enumerate(words):
            if word[0].isupper() and word[1:].islower() and len(word) > 1:
                key = word.lower()
                forms = {key, key[:-1] if key.endswith("s") else key, key[:-2] if key.endswith("es") else key}
                lower = sum(self.lower[form] for form in forms)
                capital = sum(self.capital[form] for form in forms)
                if index:  # sentence case unless the pages capitalise the word as often
                    lowered = not capital or lower > capital
                else:  # a heading's first word is capitalised anyway: lower it on evidence
                    lowered = (
                        lower > capital
                        or key in GERUNDS
                        or key in VERBS
                        or key in QUESTION_WORDS
                        or (not capital and key.endswith(COMMON_NOUN_ENDINGS))
                    )
                if lowered:
                    words[index] = key
        return " ".join(words)

    def article(self, topic: str) -> str:
        """ "a " or "an " when the singular noun phrase `topic` (as `phrase` wrote it) needs one
        after "What is", else "": names, determiners, mass nouns and gerunds get none."""
        words = topic.split()
        first, head = words[0], words[-1].lower()
        if not first[0].islower() or first in DETERMINERS or head in MASS_NOUNS or head.endswith(UNCOUNTABLE_ENDINGS):
            return ""
        used_a, used_an = self.articles["a", first], self.articles["an", first]
        if used_a or used_an:
            return "an " if used_an > used_a else "a "
        if len(words) == 1 or head.endswith(ABSTRACT_ENDINGS):
            return ""  # no evidence either way: a bare word may be a name or a mass noun
        vowel_sound = first[0] in "aeio" or (first[0] == "u" and not first.startswith(("uni", "use", "usu", "uti")))
        return "an " if vowel_sound else "a "


def natural_question(heading: str, title: str, cases: WordCases) -> str:
    """A question that fits the heading: "How to X" -> "How do I X?", "Installing X" ->
    "How do I install X?", "How X works" -> "How does X work?", "Python Lists" ->
    "What are Python lists?", "Overview" -> "Give me an overview of <title>."."""
    if heading.endswith("?"):
        return heading
    key = heading.lower().rstrip(".")
    if key in GENERIC and title and title.lower() != key:
        return GENERIC[key].format(title=cases.phrase(title))
    words = cases.phrase(heading).split()
    first, last = words[0].lower(), words[-1].lower()
    rest = " ".join(words[1:])
    if len(words) > 12 or ENDS_SENTENCE.search(heading):
        return DEFAULT_TEMPLATE.format(topic=" ".join(words))
    if first == "how" and len(words) > 2 and words[1].lower() == "to":
        return f"How do I {' '.join(words[2:])}?"
    if first == "how" and last in ("works", "work") and len(words) > 2:
        return f"How does {' '.join(words[1:-1])} work?"
    if first in QUESTION_WORDS and len(words) > 1:
        return f"Explain {' '.join(words)}."  # "Explain how pip resolves dependencies."
    if len(words) > 2 and AUXILIARIES & {word.lower() for word in words[1:]}:
        return f'Tell me about "{heading}".'  # a headline, as in RSS feeds: "Version 2 is out"
    verb = GERUNDS.get(first) or (
        first
        if first in VERBS and len(words) > 1 and (first in UNAMBIGUOUS_VERBS or words[1].lower() in OBJECT_WORDS)
        else None
    )
    if verb and len(words) > 1:
        return f"How do I {verb} {rest}?"
    topic = " ".join(words)
    if last in HOW_IT_WORKS:
        article = "" if topic[0].isupper() or first in ("the", "a", "an") else "the "
        return f"How does {article}{topic} work?"
    if first.endswith("ing") and len(first) > 4:
        return f"Explain {topic}."
    plural = last.endswith("s") and not last.endswith("ss") and last not in SINGULAR_S
    if plural:
        return f"What are {topic}?"
    return f"What is {cases.article(topic)}{topic}?"


def follow_up_questions(topic: str) -> Iterator[str]:
    """Questions for a topic's second, third, ... answer, so no question repeats."""
    yield f"Tell me more about {topic}."
    yield f"What else should I know about {topic}?"
    part = 3
    while True:
        yield f"Tell me more about {topic} (part {part})."
        part += 1
