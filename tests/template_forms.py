"""Real chat templates of the common forms, on tiny local tokenizers (no download).

Each form is the template text its model family ships in tokenizer_config.json, with the special
tokens that family's tokenizer holds. `form_tokenizer` trains a small byte-level BPE on the
packaged corpus with Qwen2's / Llama 3's pre-tokenizer (newlines split off words, special tokens
whole), so that token ids behave as the real tokenizers' do at the template's seams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Qwen2.5-Instruct (ChatML; a default system prompt when none is given).
QWEN25 = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Meta-Llama-3-8B-Instruct.
LLAMA3 = (
    r"{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    r"'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    r"'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    r"{{ content }}{% endfor %}{% if add_generation_prompt %}"
    r"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Llama-3.2-1B-Instruct, its tool-calling branches left out: a system header that is always
# there, with today's date from strftime_now.
LLAMA32 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}

{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# gemma-3-1b-it: a system prompt goes into the first user turn.
GEMMA3 = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

# gemma-2-2b-it: refuses a system message.
GEMMA2 = (
    r"{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    r"{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    r"{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    r"{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    r"{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Phi-3-mini-4k-instruct: a finished conversation ends in EOS, a prompt does not.
PHI3 = (
    r"{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
    r"'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    r"{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}"
    r"{% endif %}"
)

# Qwen3, its tool-calling branches left out: reasoning (<think>) is written for the last answer
# only, so an earlier answer reads differently once a later question follows.
QWEN3 = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""


# Mistral-7B-Instruct-v0.3, its tool-calling branches left out: [INST] and [/INST] are control
# tokens, an answer ends in EOS, and a system prompt goes into the last user message (so an
# earlier prompt reads differently once a later question follows).
MISTRAL = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{#- This block checks for alternating user/assistant messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- set ns.index = ns.index + 1 %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


@dataclass(frozen=True)
class Form:
    """A chat template with the tokens its tokenizer names (bos/eos/pad and the other special
    tokens it holds) and the tokens it holds whole that are not special (Qwen3's <think>)."""

    template: str
    end_of_turn: str
    eos: str
    bos: str | None = None
    pad: str | None = None
    others: tuple[str, ...] = field(default=())
    added: tuple[str, ...] = field(default=())


FORMS = {
    "chatml": Form(QWEN25, "<|im_end|>", eos="<|im_end|>", pad="<|endoftext|>", others=("<|im_start|>",)),
    "llama3": Form(
        LLAMA3,
        "<|eot_id|>",
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
        others=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
    ),
    "gemma": Form(
        GEMMA3, "<end_of_turn>", eos="<eos>", bos="<bos>", pad="<pad>", others=("<start_of_turn>", "<end_of_turn>")
    ),
    "phi3": Form(
        PHI3, "<|end|>", eos="<|endoftext|>", bos="<s>", others=("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
    ),
}
# Variants of the forms that test what a template may do besides, and Mistral's [INST] form (an
# answer opens with a space and ends in EOS).
VARIANTS = {
    "llama3.2": Form(
        LLAMA32,
        "<|eot_id|>",
        eos="<|eot_id|>",
        bos="<|begin_of_text|>",
        others=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
    ),
    "gemma2": Form(
        GEMMA2, "<end_of_turn>", eos="<eos>", bos="<bos>", pad="<pad>", others=("<start_of_turn>", "<end_of_turn>")
    ),
    "qwen3": Form(
        QWEN3,
        "<|im_end|>",
        eos="<|im_end|>",
        pad="<|endoftext|>",
        others=("<|im_start|>",),
        added=("<think>", "</think>"),
    ),
    "mistral": Form(MISTRAL, "</s>", eos="</s>", bos="<s>", others=("[INST]", "[/INST]")),
}

# Qwen2's and Llama 3's pre-tokenizer split (newlines apart from words, digits one by one).
SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def form_tokenizer(form: Form, texts: list[str] = ()):
    """A transformers tokenizer of `form`: byte-level BPE trained on the packaged corpus and
    `texts`, the form's special and added tokens whole, its chat template set."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from mtnsails.train.models import packaged_corpus

    special = [token for token in (form.bos, form.eos, form.pad, *form.others) if token]
    special = list(dict.fromkeys(special))
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1500,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*texts, *packaged_corpus()], trainer=trainer)
    named = {"bos_token": form.bos, "eos_token": form.eos, "pad_token": form.pad or form.eos}
    extra = [token for token in special if token not in named.values()]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        **{key: value for key, value in named.items() if value},
        additional_special_tokens=extra,
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.add_tokens(list(form.added))
    tokenizer.chat_template = form.template
    return tokenizer


# -- what training learns and what chat and serve feed the model -------------------------------


def learned_runs(labels: list[int]) -> list[list[int]]:
    """The runs of learned ids in a training example's labels (-100: not learned), in order."""
    runs, run = [], []
    for label in [*labels, -100]:
        if label != -100:
            run.append(label)
        elif run:
            runs.append(run)
            run = []
    return runs


def openai_messages(conversation: dict) -> list[dict]:
    """A conversation record (its "system", "history" and "input") as OpenAI chat messages, up
    to its question."""
    result = [{"role": "system", "content": conversation["system"]}] if conversation.get("system") else []
    for turn in conversation.get("history") or []:
        result += [{"role": "user", "content": turn["input"]}, {"role": "assistant", "content": turn["output"]}]
    return [*result, {"role": "user", "content": conversation["input"]}]


def prompt_and_learned_ids(model_dir, onnx_dir, conversations: list[dict]) -> list[tuple[list[int], list[int]]]:
    """Check that the ids training learns each conversation from (the trained model's tokenizer
    and the template its mtnsails.json records, through the collator) are the prompt ids chat
    builds for it from the ONNX directory, then the last answer's learned ids; that `serve`
    builds the same prompt from the OpenAI messages ("developer" for the system role); and, for
    a Jinja template, that transformers' `apply_chat_template` feeds the model the same prompt
    (the system prompt put in the first user message, as chat does, where the template has no
    system role). Returns (prompt ids, the last answer's learned ids) per conversation."""
    import json
    from pathlib import Path

    from transformers import AutoTokenizer

    from mtnsails.inference.chat import ChatInterface
    from mtnsails.inference.generation_config import GenerationConfig
    from mtnsails.model_dir.jinja_template import JinjaTemplate, template_from_dict
    from mtnsails.model_dir.template import exchanges
    from mtnsails.serve.server import parse_request
    from mtnsails.train.collator import encode_segments

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trained = template_from_dict(json.loads((Path(model_dir) / "mtnsails.json").read_text())["template"])
    chat = ChatInterface(onnx_dir, precision="fp32", match_questions=False)
    assert chat.template == trained  # the template travelled into the ONNX directory
    checked = []
    for conversation in conversations:
        system = conversation.get("system")
        training = encode_segments(tokenizer, list(trained.segments(exchanges(conversation), system)), 4096)
        history = [(turn["input"], turn["output"]) for turn in conversation.get("history") or []]
        prompt = chat.prompt_ids(conversation["input"], history, system=system)
        learned = learned_runs(training["labels"])[-1]
        assert training["input_ids"] == prompt + learned, conversation
        messages = openai_messages(conversation)
        if isinstance(trained, JinjaTemplate):
            expected = [dict(message) for message in messages]
            if system and not trained.system_role:
                expected = expected[1:]
                expected[0]["content"] = f"{system}\n\n{expected[0]['content']}"
            assert prompt == tokenizer.apply_chat_template(expected, add_generation_prompt=True), conversation
        body = {"messages": [{**m, "role": m["role"].replace("system", "developer")} for m in messages]}
        job, _, _ = parse_request(body, GenerationConfig())
        assert chat.engine.prompt(job.question, job.history, system=job.system).ids == prompt, conversation
        checked.append((prompt, learned))
    return checked
