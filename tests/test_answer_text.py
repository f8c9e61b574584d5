"""AnswerText: decoding an answer token by token, cut at stop texts, streamed safely."""

from __future__ import annotations

from tokenizers import Tokenizer

from mtnsails.inference.answer_text import (
    AnswerText,
    held_back,
    one_line,
    trim_dangling_sentence,
    without_empty_reasoning,
)


def test_streaming_holds_back_what_may_not_be_shown():
    assert held_back("It is four.\nUs", ["User:"]) == 3  # maybe the start of a new user turn
    assert held_back("Caf\ufffd", ["User:"]) == 1  # half of a multi-byte character
    assert held_back("Paris ", ["User:"]) == 1  # trailing space (the answer is stripped)
    assert held_back("Paris is", ["User:"]) == 0
    assert held_back("Paris. EN", ["User:", "END"]) == 3  # " EN": maybe "END", and the space before


def test_trim_dangling_sentence():
    assert trim_dangling_sentence("No end here") == "No end here"
    assert trim_dangling_sentence('He said "yes." Then he') == 'He said "yes."'


def test_one_line_leaves_no_line_break_a_line_reader_would_split_at():
    answer = "Water it weekly.\nKeep it warm.\x1dNo frost.\u2028Repot\r\nin spring."
    assert one_line(answer).splitlines() == [one_line(answer)]
    assert one_line(answer) == "Water it weekly. Keep it warm. No frost. Repot in spring."


def test_answer_stops_at_the_first_stop_text_or_eos(tiny_onnx_dir):
    tokenizer = Tokenizer.from_file(str(tiny_onnx_dir / "tokenizer.json"))
    ids = tokenizer.encode(" It is four. END of it\nUser: more", add_special_tokens=False).ids
    answer = AnswerText(tokenizer, ["User:", "END"], eos_token_id=0)
    pieces = []
    for token in ids:
        pieces.append(answer.add(token))
        if answer.stop_reason:
            break
    assert answer.stop_reason == "stop" and answer.stop_text == "END"
    assert "".join(pieces) == "It is four." and answer.finish() == "It is four."
    eos = AnswerText(tokenizer, ["User:"], eos_token_id=0)
    assert [eos.add(token) for token in ids[:2] + [0]][-1] == "" and eos.stop_reason == "eos"


def test_streamed_text_is_the_whole_decode_also_across_split_characters(tiny_onnx_dir):
    """Multi-byte characters split over several byte tokens are shown once whole, and the pieces
    add up to what decoding all the tokens at once gives."""
    tokenizer = Tokenizer.from_file(str(tiny_onnx_dir / "tokenizer.json"))
    text = " Crème brûlée at 5 °C — 北京 🚀 ok. Ünïcödé."
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert any("\ufffd" in tokenizer.decode(ids[:end]) for end in range(len(ids)))  # characters split
    answer = AnswerText(tokenizer, ["User:"], eos_token_id=None)
    pieces = [answer.add(token) for token in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert "".join(pieces) == answer.finish() == tokenizer.decode(ids).strip() == text.strip()


def test_an_answer_ending_inside_a_character_keeps_the_text_before_it():
    """A token can end with the first byte of a character (byte-level BPE merges "br" with the
    first byte of "û"): when the answer stops there, its text is everything before that byte."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        ["Crème brûlée, Crème brûlée"] * 20,
        trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    cut = next(
        token
        for token in range(tokenizer.get_vocab_size())
        if (text := tokenizer.decode([token])).endswith("\ufffd") and text.rstrip("\ufffd").strip()
    )
    ids = tokenizer.encode("Crème", add_special_tokens=False).ids + [cut]
    answer = AnswerText(tokenizer, ["User:"], eos_token_id=None)
    streamed = "".join(answer.add(token) for token in ids)
    whole = tokenizer.decode(ids).replace("\ufffd", "").strip()
    assert answer.finish() == whole and whole.startswith(streamed) and len(whole) > len("Crème")


def test_a_stream_decoder_that_refuses_a_token_hands_over_to_whole_decoding(tiny_onnx_dir):
    """tokenizers' stream decoder raises for a prefix it cannot follow (a rare decoder setup):
    from then on the answer is decoded whole, with the same text."""
    tokenizer = Tokenizer.from_file(str(tiny_onnx_dir / "tokenizer.json"))
    ids = tokenizer.encode(" It is four. Crème brûlée.", add_special_tokens=False).ids

    class Refusing:
        def step(self, tokenizer, token):
            raise Exception("Invalid prefix encountered")

    answer = AnswerText(tokenizer, ["User:"], eos_token_id=None)
    pieces = [answer.add(token) for token in ids[:3]]
    answer._stream = Refusing()
    pieces += [answer.add(token) for token in ids[3:]]
    assert answer._stream is None
    assert "".join(pieces) == answer.finish() == tokenizer.decode(ids).strip()


def test_an_empty_reasoning_block_that_opens_the_answer_is_no_part_of_it():
    """Qwen3's template writes `<think>\n\n</think>\n\n` before every trained answer that has
    no reasoning: chat and serve show the answer after it, streamed or whole. A block with
    reasoning in it stays, and so does text that only starts as one would."""
    from tokenizers import decoders, models, pre_tokenizers, trainers

    assert without_empty_reasoning(" <think>\n\n</think>\n\nBlue.") == ("Blue.", False)
    assert without_empty_reasoning("<thi") == without_empty_reasoning("<think>\n</th") == ("", True)
    assert without_empty_reasoning("<think> </think>") == ("", False)
    assert without_empty_reasoning("<think>Sky?</think> Blue.") == ("<think>Sky?</think> Blue.", False)
    assert without_empty_reasoning("<thin air") == ("<thin air", False)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        ["The sky is blue on a clear day."] * 5,
        trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False),
    )
    tokenizer.add_tokens(["<think>", "</think>"])
    for text, shown in [
        ("<think>\n\n</think>\n\nThe sky is blue.", "The sky is blue."),
        ("<think>\n\n</think>", ""),
        ("<think>Is it?</think>\n\nBlue.", "<think>Is it?</think>\n\nBlue."),
        ("<thin air", "<thin air"),
    ]:
        answer = AnswerText(tokenizer, ["User:"], eos_token_id=None)
        streamed = "".join(answer.add(token) for token in tokenizer.encode(text).ids)
        assert answer.finish() == shown and shown.startswith(streamed), text
