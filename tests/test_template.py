"""ChatTemplate: the one place that decides how training text and chat prompts look."""

import pytest

from mtnsails.model_dir.template import ChatTemplate, Segment, segment_ids


def test_default_template_renders_the_original_training_text():
    template = ChatTemplate()
    assert template.render([("What is 2+2?", "It is 4.")]) == "User: What is 2+2?\nAssistant: It is 4."


def test_prompt_ends_before_the_space_so_the_answer_starts_with_it():
    template = ChatTemplate()
    assert template.prompt_text("hi") == "User: hi\nAssistant:"
    assert template.response_text("Hello.") == " Hello."
    assert template.user_marker == "User:"


def test_multi_turn_segments_alternate_and_an_open_turn_yields_only_its_prompt():
    segments = list(ChatTemplate().segments([("a?", "A."), ("b?", None)], system="Be brief."))
    assert segments == [
        Segment("Be brief.\n", False),
        Segment("User: a?\nAssistant:", False),
        Segment(" A.", True),
        Segment("\nUser: b?\nAssistant:", False),
    ]


def test_custom_template_round_trips_through_its_dict():
    template = ChatTemplate(template="Q: {input}\nA: {output}", separator="\n\n")
    assert ChatTemplate.from_dict(template.to_dict()) == template
    assert template.user_marker == "Q:"
    assert ChatTemplate.from_dict(None) == ChatTemplate()


@pytest.mark.parametrize("bad", ["{input}", "User: {output}", "{input} {input} {output}"])
def test_a_template_without_one_input_and_a_final_output_is_refused(bad):
    with pytest.raises(ValueError, match="must contain"):
        ChatTemplate(template=bad)


def test_the_own_format_stops_at_its_user_marker_and_has_no_end_of_turn_token():
    template = ChatTemplate(template="Q: {input}\nA: {output}")
    assert template.stop_texts == ("Q:",) and template.stop_tokens == ()


def test_eos_follows_every_response_unless_it_carries_its_own_end():
    segments = [Segment("ab", False), Segment("cd", True), Segment("ef", True, eos=False)]
    pieces = [ids for _, ids in segment_ids(lambda text: [ord(c) for c in text], segments, eos_id=0)]
    assert pieces == [[97, 98], [99, 100, 0], [101, 102]]
