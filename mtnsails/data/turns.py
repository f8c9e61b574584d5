"""Chat turns: (role, text) messages in the OpenAI and ShareGPT forms, and the exchanges they hold.

Shared by the data readers and by `serve`, which receives OpenAI messages. A bad message raises
`DataFormatError` naming where it is and what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mtnsails.core.errors import DataFormatError

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}


def _json_type(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _string(record: dict, key: str, where: str, required: bool = True) -> str:
    if key not in record:
        if required:
            raise DataFormatError(f"{where}: missing '{key}'")
        return ""
    value = record[key]
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(f"{where}: '{key}' must be a string, got {_json_type(value)}")
    return value


def _objects(items: Any, key: str, where: str) -> Iterator[tuple[str, dict]]:
    """Yield ("<where>: key[i]", item) for a JSON array of objects, or raise naming the bad one."""
    if not isinstance(items, list):
        raise DataFormatError(f"{where}: '{key}' must be an array, got {_json_type(items)}")
    for index, item in enumerate(items):
        item_where = f"{where}: {key}[{index}]"
        if not isinstance(item, dict):
            raise DataFormatError(f"{item_where}: expected an object, got {_json_type(item)}")
        yield item_where, item


def _sharegpt_turns(turns: Any, where: str) -> list[tuple[str, str]]:
    result = []
    for turn_where, turn in _objects(turns, "conversations", where):
        speaker = _string(turn, "from", turn_where)
        role = SHAREGPT_ROLES.get(speaker.lower())
        if role is None:
            raise DataFormatError(f"{turn_where}: unknown speaker '{speaker}' (expected human, gpt or system)")
        result.append((role, _string(turn, "value", turn_where)))
    return result


# OpenAI's roles -> ours: "developer" is what current OpenAI clients send for system instructions.
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def openai_turns(messages: Any, where: str) -> list[tuple[str, str]]:
    """OpenAI `messages` -> (role, text) turns; a bad message raises naming `where` and its index."""
    result = []
    for turn_where, message in _objects(messages, "messages", where):
        role = _string(message, "role", turn_where)
        role = OPENAI_ROLES.get(role)
        if role is None:
            raise DataFormatError(
                f"{turn_where}: unsupported role '{message['role']}' (expected system, developer, user or assistant)"
            )
        content = message.get("content")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            texts = [part.get("text", "") for part in content if isinstance(part, dict)]
            if not all(isinstance(text, str) for text in texts):
                raise DataFormatError(f"{turn_where}: a content part's 'text' must be a string")
            content = "".join(texts)
        if not isinstance(content, str):
            raise DataFormatError(f"{turn_where}: 'content' must be a string, got {_json_type(content)}")
        result.append((role, content))
    return result


def split_turns(turns: list[tuple[str, str]]) -> tuple[str | None, list[tuple[str, str]], str | None]:
    """(role, text) turns -> the system text, the (user, assistant) exchanges and the last user
    turn if nobody answered it. Consecutive turns of one role are joined; an assistant turn
    opening the chat answers an empty user turn."""
    system_parts = [text for role, text in turns if role == "system"]
    merged: list[list[str]] = []
    for role, text in turns:
        if role == "system":
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1] += "\n" + text
        else:
            merged.append([role, text])
    if merged and merged[0][0] == "assistant":
        merged.insert(0, ["user", ""])  # an assistant greeting opens the chat
    question = merged.pop()[1] if merged and merged[-1][0] == "user" else None
    pairs = [(merged[i][1], merged[i + 1][1]) for i in range(0, len(merged) - 1, 2)]
    return "\n".join(system_parts) or None, pairs, question
