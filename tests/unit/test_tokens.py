"""Token counting: what is counted, the estimate, the chat template as transformers renders it, the
piecewise count, the model files. Checked against mlx_lm.server's own prompt code as the oracle."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import jinja2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlx_gateway.anthropic import types as an
from mlx_gateway.anthropic.count import count_request
from mlx_gateway.anthropic.request import to_openai_request
from mlx_gateway.backends.localmodel import (
    ChatTemplate,
    LocalTokenizer,
    ModelFiles,
    PieceCounts,
    boundary_tokens,
    build_local_tokenizer,
    compile_template,
    find_model_folder,
    hub_cache,
    read_model_files,
    special_token_variables,
    template_messages,
    template_sources,
    thinks_by_default,
)
from mlx_gateway.backends.profiles import PROFILES
from mlx_gateway.backends.tokens import (
    apply_template_body,
    chat_tokenize_body,
    count_from_tokenize_answer,
    estimate_tokens,
    plain_text,
    prompt_from_template_answer,
    prompt_part,
    text_tokenize_body,
)
from tests.support.tiny_model import build_tiny_model

FIXTURE = Path(__file__).resolve().parents[1] / "e2e" / "fixtures" / "claude_code_request.json"
MLX = PROFILES["mlx_lm"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}

# Anthropic request bodies, each one shape of conversation the gateway must count exactly.
CONVERSATIONS: dict[str, dict[str, Any]] = {
    "plain": {"messages": [{"role": "user", "content": "Hello there, how are you?"}]},
    "system": {
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=1; nonce=42"},
            {"type": "text", "text": "You are terse."},
        ],
        "messages": [{"role": "user", "content": "Say hi."}],
    },
    "tools": {
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "Weather in Paris? Ünïcödé «ok» <b>"}],
    },
    "tool round trip": {
        "system": "Use tools.",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "t1", "name": "get_weather",
                     "input": {"city": "Paris", "days": [1, 2]}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "sunny, 21°C"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    },
    "thinking off": {
        "thinking": {"type": "disabled"},
        "messages": [{"role": "user", "content": "Quick answer please."}],
    },
    "thinking on": {
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "Think first."}],
    },
}  # fmt: skip


def counted_body(body: dict[str, Any]) -> dict[str, Any]:
    request = an.decode_count_tokens_request(json.dumps({"model": "claude", **body}).encode())
    return count_request(request, model="local-model", profile=MLX)


@pytest.fixture(scope="module")
def tiny() -> Path:
    return build_tiny_model()


@pytest.fixture(scope="module")
def local(tiny: Path) -> LocalTokenizer:
    counter = build_local_tokenizer(read_model_files(tiny))
    assert counter is not None
    return counter


@pytest.fixture(scope="module")
def mlx_tokenizer(tiny: Path) -> Any:
    """mlx_lm.server's own tokenizer wrapper: the reference the gateway must agree with."""
    from mlx_lm.tokenizer_utils import load

    return load(tiny)


def mlx_server_count(wrapper: Any, body: dict[str, Any]) -> int:
    """The prompt length as mlx_lm.server computes it (server.py, `_tokenize` for chat)."""
    from mlx_lm.server import process_message_content

    body = json.loads(msgspec.json.encode(body))  # what the server reads off the wire
    messages = body["messages"]
    process_message_content(messages)
    kwargs = dict(body.get("chat_template_kwargs") or {})
    prompt = wrapper.apply_chat_template(
        messages, add_generation_prompt=True, tools=body.get("tools"), **kwargs
    )
    return len(prompt)


# ---- what is counted --------------------------------------------------------------------------


def test_count_request_is_the_prompt_part_of_the_forwarded_request() -> None:
    body = {"model": "claude", "max_tokens": 99, **CONVERSATIONS["tool round trip"]}
    forwarded = to_openai_request(
        an.decode_messages_request(json.dumps(body).encode()),
        model="local-model",
        profile=MLX,
        stream=True,
    )
    assert counted_body(CONVERSATIONS["tool round trip"]) == prompt_part(forwarded)
    assert set(prompt_part(forwarded)) == {"model", "messages", "tools"}


def test_count_request_drops_the_billing_header_and_keeps_the_thinking_switch() -> None:
    system = counted_body(CONVERSATIONS["system"])["messages"][0]
    assert system == {"role": "system", "content": "You are terse."}
    off = counted_body(CONVERSATIONS["thinking off"])
    assert off["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"messages": [{"role": "user", "content": "hello"}]}, "<|user|>\nhello"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                    {"type": "image_url"}]}]}, "<|user|>\na"),
        ({"messages": [{"role": "assistant", "content": None, "reasoning_content": "hm",
                        "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}]},
         "<|assistant|>\n\nhm\nf({})"),
        ({"tools": [{"type": "function"}], "messages": []}, '[{"type": "function"}]'),
    ],
)  # fmt: skip
def test_plain_text(body: dict[str, Any], text: str) -> None:
    assert plain_text(body) == text


@pytest.mark.parametrize(("characters", "tokens"), [(0, 0), (1, 1), (7, 2), (8, 3), (35, 10)])
def test_estimate_is_characters_over_three_and_a_half_rounded_up(
    characters: int, tokens: int
) -> None:
    body = {"messages": [{"role": "u", "content": "x" * max(characters - 6, 0)}]}
    assert len(plain_text(body)) == max(characters, 6)
    if characters >= 6:
        assert estimate_tokens(body) == tokens
    assert estimate_tokens({"messages": []}) == 0


# ---- the messages the template sees -----------------------------------------------------------


def test_template_messages_follow_mlx_lm_then_transformers() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None, "name": None,
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "f", "arguments": '{"x": [1, "é"]}'}}]},
        {"role": "assistant", "content": "ok", "reasoning_content": "because"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "g", "arguments": "not json"}}]},
    ]  # fmt: skip
    original = copy.deepcopy(messages)
    assert template_messages(messages) == [
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"id": "1", "type": "function",
                         "function": {"name": "f", "arguments": {"x": [1, "é"]}}}]},
        {"thinking": "because", "role": "assistant", "content": "ok",
         "reasoning_content": "because"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "g", "arguments": "not json"}}]},
    ]  # fmt: skip
    assert messages == original


# ---- the template environment -----------------------------------------------------------------


def render(source: str, **variables: Any) -> str:
    return compile_template(source).render(**variables)


@pytest.mark.parametrize(
    ("source", "variables", "expected"),
    [
        # transformers' tojson: no HTML escaping, non-ASCII kept, its keyword options
        ("{{ x | tojson }}", {"x": {"a": "<é>"}}, '{"a": "<é>"}'),
        ("{{ x | tojson(indent=2) }}", {"x": [1]}, "[\n  1\n]"),
        ("{{ x | tojson(separators=(',', ':'), sort_keys=true) }}", {"x": {"b": 1, "a": 2}},
         '{"a":2,"b":1}'),
        # trim_blocks and lstrip_blocks
        ("  {% if true %}\nA\n  {% endif %}\nB", {}, "A\nB"),
        # loop controls
        ("{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", {},
         "1"),
        # transformers' training-mask tag renders its body
        ("{% generation %}ans{% endgeneration %}!", {}, "ans!"),
        ("{{ strftime_now('%Y') }}", {}, time.strftime("%Y")),
        ("{% set ns = namespace(n=0) %}{% for i in [1, 2] %}{% set ns.n = ns.n + i %}"
         "{% endfor %}{{ ns.n }}", {}, "3"),
    ],
)  # fmt: skip
def test_template_environment(source: str, variables: dict[str, Any], expected: str) -> None:
    assert render(source, **variables) == expected


def test_raise_exception_and_the_sandbox() -> None:
    with pytest.raises(jinja2.TemplateError, match="roles must alternate"):
        render("{{ raise_exception('roles must alternate') }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        render("{{ x.__class__.__mro__ }}", x="")
    with pytest.raises(jinja2.exceptions.SecurityError):
        render("{% set _ = x.append(1) %}", x=[])


def test_chat_template_variables_and_selection() -> None:
    source = "{{ bos_token }}{{ enable_thinking }}|{{ messages[0].content }}|{{ tools | tojson }}"
    template = ChatTemplate(
        templates={"default": compile_template(source), "tool_use": compile_template("T")},
        variables={"bos_token": "<s>", "enable_thinking": True},
    )
    plain = {"messages": [{"role": "user", "content": None}]}
    assert template.render(plain) == "<s>True||null"
    switched = {**plain, "chat_template_kwargs": {"enable_thinking": False}}
    assert template.render(switched) == "<s>False||null"
    assert template.render({**plain, "tools": []}) == "T"
    only_tools = ChatTemplate(templates={"tool_use": compile_template("T")}, variables={})
    with pytest.raises(LookupError):
        only_tools.render(plain)


# ---- exact counts: the oracle is mlx_lm.server's own code -------------------------------------


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_local_count_equals_mlx_lm_server(
    name: str, local: LocalTokenizer, mlx_tokenizer: Any
) -> None:
    body = counted_body(CONVERSATIONS[name])
    assert local.count(body) == mlx_server_count(mlx_tokenizer, body)


def test_claude_code_request_counts_exactly(local: LocalTokenizer, mlx_tokenizer: Any) -> None:
    body = json.loads(FIXTURE.read_bytes())
    counted = counted_body({key: body[key] for key in ("system", "messages", "tools")})
    assert len(counted["tools"]) > 5
    expected = mlx_server_count(mlx_tokenizer, counted)
    assert local.count(counted) == expected
    assert local.count(counted) == expected  # the second time from the piece cache


def test_piecewise_count_equals_whole_text_count(local: LocalTokenizer) -> None:
    body = counted_body({**json.loads(FIXTURE.read_bytes()), "model": "m"})
    text = local.render(body)
    pieces, _, _ = local.plan(text)
    assert len(pieces) > 10
    assert "".join(pieces) == text
    whole = len(local.tokenizer.encode(text, add_special_tokens=False).ids)
    assert LocalTokenizer(local.tokenizer, None, ["<|im_start|>"]).count_text(text) == whole


_MARKUP = ["<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>", "<think>", "<tools>"]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_MARKUP),
            st.text(alphabet=' \n\tab<|>/_xé{}":', max_size=12),
            st.sampled_from(["<|im_", "start|>", "<tool", "_call>", " ", "\n\n"]),
        ),
        max_size=30,
    )
)
def test_piecewise_count_equals_whole_count_for_any_text(parts: list[str]) -> None:
    counter = _property_counter()
    text = "".join(parts)
    assert counter.count_text(text) == len(counter.tokenizer.encode(text).ids)


_COUNTERS: list[LocalTokenizer] = []


def _property_counter() -> LocalTokenizer:
    """One counter for all examples (hypothesis runs the body many times), cache included."""
    if not _COUNTERS:
        counter = build_local_tokenizer(read_model_files(build_tiny_model()))
        assert counter is not None
        _COUNTERS.append(counter)
    return _COUNTERS[0]


def test_count_cost_for_the_claude_code_request(tiny: Path) -> None:
    """The cost a count_tokens flood meets: the first count of a 54 KB request, then repeats."""
    counter = build_local_tokenizer(read_model_files(tiny))
    assert counter is not None
    body = counted_body({**json.loads(FIXTURE.read_bytes()), "model": "m"})
    started = time.perf_counter()
    counter.count(body)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(20):
        counter.count(body)
    repeat = (time.perf_counter() - started) / 20
    print(f"\ncount of the 54 KB request: first {first * 1e3:.1f} ms, then {repeat * 1e3:.2f} ms")
    assert repeat < 0.02


# ---- the tokenizer's boundaries and the piece cache -------------------------------------------


@pytest.mark.parametrize(
    ("tokens", "boundaries"),
    [
        ([{"content": "<|im_start|>"}, {"content": "<|im_end|>"}], ["<|im_start|>", "<|im_end|>"]),
        ([{"content": "<a>", "lstrip": True}], []),
        ([{"content": "<a>", "normalized": True}], []),
        ([{"content": "<a>", "single_word": True}], []),
        ([{"content": ""}], []),
        # a longer token that contains it further in, or ends where it begins, could win
        ([{"content": "<a>"}, {"content": "x<a>"}], ["x<a>"]),
        ([{"content": "<a>"}, {"content": "b<"}], ["b<"]),
        ([{"content": "<a>"}, {"content": "<a>b"}], ["<a>", "<a>b"]),
    ],
)
def test_boundary_tokens(tokens: list[dict[str, Any]], boundaries: list[str]) -> None:
    assert boundary_tokens(tokens) == boundaries


def test_piece_counts_forget_the_least_recently_used_beyond_the_size() -> None:
    counts = PieceCounts(max_chars=6)
    counts.remember({"aa": 1, "bb": 2})
    assert counts.known(["aa", "zz"]) == {"aa": 1}
    counts.remember({"cccc": 3})
    assert counts.known(["aa", "bb", "cccc"]) == {"aa": 1, "cccc": 3}


# ---- the model's files ------------------------------------------------------------------------


def test_hub_cache_follows_huggingface_hub(tmp_path: Path) -> None:
    assert hub_cache({"HF_HUB_CACHE": "/a", "HF_HOME": "/b"}) == Path("/a")
    assert hub_cache({"HF_HOME": "/b"}) == Path("/b/hub")
    assert hub_cache({"XDG_CACHE_HOME": "/c"}) == Path("/c/huggingface/hub")
    assert hub_cache({}) == Path.home() / ".cache" / "huggingface" / "hub"


def test_find_model_folder(tmp_path: Path) -> None:
    environ = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    assert find_model_folder(str(tmp_path), environ) == tmp_path
    assert find_model_folder("org/missing", environ) is None
    assert find_model_folder("qwen3:8b", environ) is None
    repo = tmp_path / "hub" / "models--org--name"
    old, new = repo / "snapshots" / "aaa", repo / "snapshots" / "bbb"
    old.mkdir(parents=True)
    new.mkdir()
    os.utime(old, (1, 1))
    assert find_model_folder("org/name", environ) == new
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaa\n")
    assert find_model_folder("org/name", environ) == old


def test_template_sources_by_precedence(tmp_path: Path) -> None:
    config = {"chat_template": "C"}
    assert template_sources(ModelFiles(tmp_path, tokenizer_config=config)) == {"default": "C"}
    files = ModelFiles(tmp_path, tokenizer_config=config, templates={"default": "J"})
    assert template_sources(files) == {"default": "J"}
    listed = {"chat_template": [{"name": "default", "template": "D"},
                                {"name": "tool_use", "template": "U"}]}  # fmt: skip
    assert template_sources(ModelFiles(tmp_path, tokenizer_config=listed)) == {
        "default": "D",
        "tool_use": "U",
    }
    python_renderer = {"chat_template": "C", "chat_template_type": "deepseek_v32"}
    assert template_sources(ModelFiles(tmp_path, tokenizer_config=python_renderer)) == {}


def test_read_model_files_takes_template_files(tmp_path: Path) -> None:
    (tmp_path / "chat_template.jinja").write_text("J")
    (tmp_path / "additional_chat_templates").mkdir()
    (tmp_path / "additional_chat_templates" / "tool_use.jinja").write_text("U")
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 7}')
    files = read_model_files(tmp_path)
    assert files.templates == {"default": "J", "tool_use": "U"}
    assert files.config == {"max_position_embeddings": 7}
    assert files.tokenizer_json is None
    assert build_local_tokenizer(files) is None


def test_special_token_variables() -> None:
    files = ModelFiles(
        Path(),
        tokenizer_config={"bos_token": {"content": "<s>"}, "eos_token": "</s>", "pad_token": None},
        special_tokens_map={"unk_token": "<unk>", "eos_token": "ignored"},
    )
    assert special_token_variables(files) == {"bos_token": "<s>", "eos_token": "</s>",
                                              "unk_token": "<unk>"}  # fmt: skip


@pytest.mark.parametrize(
    ("vocab", "thinks"),
    [({"<think>": 1, "</think>": 2}, True), ({"<think>": 1}, False), ({}, False),
     ({"<|channel>": 1, "<channel|>": 2}, True)],
)  # fmt: skip
def test_thinks_by_default_as_mlx_lm_infers_it(vocab: dict[str, int], thinks: bool) -> None:
    assert thinks_by_default(vocab) is thinks


def test_tiny_model_counter_reads_its_template_and_thinking_default(local: LocalTokenizer) -> None:
    assert local.template is not None
    assert local.template.variables["enable_thinking"] is True
    assert local.template.variables["eos_token"] == "<|im_end|>"


# ---- counting by the backend ------------------------------------------------------------------


def test_backend_count_bodies() -> None:
    body = {**counted_body(CONVERSATIONS["tools"]), "chat_template_kwargs": {"x": 1}}
    vllm = chat_tokenize_body({**body, "max_tokens": 5, "stream": True})
    assert vllm == {**body, "add_generation_prompt": True}
    assert apply_template_body(body) == {k: v for k, v in body.items() if k != "model"}
    assert text_tokenize_body("p") == {"content": "p", "add_special": True, "parse_special": True}


@pytest.mark.parametrize(
    ("answer", "count"),
    [({"count": 7, "tokens": [1], "max_model_len": 9}, 7), ({"tokens": [1, 2, 3]}, 3),
     ({"count": True}, None), ({}, None), ([], None), ({"tokens": "x"}, None)],
)  # fmt: skip
def test_count_from_tokenize_answer(answer: Any, count: int | None) -> None:
    assert count_from_tokenize_answer(answer) == count


def test_prompt_from_template_answer() -> None:
    assert prompt_from_template_answer({"prompt": "<s>hi"}) == "<s>hi"
    assert prompt_from_template_answer({"prompt": 3}) is None
    assert prompt_from_template_answer("x") is None


def test_estimate_is_near_the_real_count_for_the_claude_code_request(
    local: LocalTokenizer,
) -> None:
    """Documented as a rough figure: within a factor of two of the tiny model's count."""
    body = counted_body({**json.loads(FIXTURE.read_bytes()), "model": "m"})
    ratio = estimate_tokens(body) / local.count(body)
    assert 0.5 < ratio < 2, ratio
    assert math.isfinite(ratio)
