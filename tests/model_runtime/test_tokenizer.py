"""Chat templates, the incremental detokenizer and stop strings, on tokenizers trained here.

Three tiny tokenizers cover the decoders real models use: byte-level BPE (GPT-2, Llama 3,
SmolLM, Qwen), SentencePiece-style Metaspace BPE, and Llama-2-style BPE with byte fallback and a
BOS post-processor. All are trained in a few milliseconds; nothing touches the network.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from model_runtime.api import ChatMessage, ChatTemplateError, InvalidPrompt
from model_runtime.detokenizer import IncrementalDetokenizer
from model_runtime.tokenizer import CHATML_TEMPLATE, ChatTemplate, StopMatcher, Tokenizer

CORPUS = [
    "The café served crème brûlée and a piña colada.",
    "Señor Müller lives in Zürich — naïve façade!",
    "日本語のテキストを分割します。東京は大きい都市です。",
    "中文文本也很重要，北京欢迎你。",
    "Emoji time: 🙂 😀 🚀 🎉 👍🏽 and ❤️ too.",
    "Hello world, this is a small tokenizer test with plain ASCII words.",
    "def f(x):\n    return x * 2  # code\n",
] * 3
ASCII_CORPUS = [line for line in CORPUS if line.isascii()] + ["The capital of France is Paris."] * 3

# Text the random tests draw from: every kind of character the corpus has, and ones it lacks.
WORDS = "the café brûlée Zürich 日本語 東京 北京 🙂 🚀 👍🏽 ❤️ x world Paris ñ ß € Ω 한국어 — def"
PIECES = [" ", "  ", "\n", "\t", ",", ".", *WORDS.split(" ")]

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system is defined %}"
    "{% set content = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

# Exercises what real templates use: namespace, loop controls, tojson, extra message keys, dict().
FANCY_TEMPLATE = """{%- set ns = namespace(count=0) -%}
{%- for message in messages %}
  {%- if message.role == 'system' %}{% continue %}{% endif %}
  {%- set ns.count = ns.count + 1 %}
<|im_start|>{{ message.role }}{% if message.name is defined %} ({{ message.name }}){% endif %}

{{ message.content | trim }}
{%- if message.meta is defined %} {{ message.meta | tojson }}{% endif %}
{%- if message.tool_calls is defined %} {{ dict(calls=message.tool_calls) | tojson(indent=1) }}{% endif %}
<|im_end|>
{%- if ns.count > 5 %}{% break %}{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


def _train_bytelevel() -> RawTokenizer:
    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,  # small, so many multibyte characters stay split across tokens
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _train_metaspace() -> RawTokenizer:
    tok = RawTokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "</s>"], show_progress=False)
    tok.train_from_iterator(CORPUS + ASCII_CORPUS + ["".join(PIECES)], trainer)  # no <unk> in tests
    return tok


def _train_llama_style() -> RawTokenizer:
    """Llama 2's layout (as transformers builds it): Metaspace, byte fallback, BOS, Strip decoder.

    Trained on ASCII only, so every non-ASCII character is spelled as <0xNN> byte tokens.
    """
    trainer = trainers.BpeTrainer(vocab_size=200, show_progress=False)
    base = RawTokenizer(models.BPE())
    base.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    base.train_from_iterator(ASCII_CORPUS, trainer)
    trained = json.loads(base.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    tok = RawTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def _save(folder: Path, raw: RawTokenizer, generation_eos: object = None, **hf_kwargs: object) -> Path:
    PreTrainedTokenizerFast(tokenizer_object=raw, **hf_kwargs).save_pretrained(str(folder))
    if generation_eos is not None:
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": generation_eos}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    bytelevel = _train_bytelevel()
    return {
        "bytelevel": _save(
            root / "bytelevel",
            bytelevel,
            generation_eos=[bytelevel.token_to_id("<|endoftext|>"), bytelevel.token_to_id("<|im_end|>")],
            eos_token="<|im_end|>",
            bos_token="<|endoftext|>",
            chat_template=CHATML_TEMPLATE,
        ),
        "metaspace": _save(root / "metaspace", _train_metaspace(), eos_token="</s>", unk_token="<unk>"),
        "llama": _save(
            root / "llama",
            _train_llama_style(),
            generation_eos=2,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            chat_template=LLAMA2_TEMPLATE,
        ),
    }


@pytest.fixture(scope="module")
def tokenizers(folders: dict[str, Path]) -> dict[str, Tokenizer]:
    return {kind: Tokenizer.from_folder(path) for kind, path in folders.items()}


KINDS = ["bytelevel", "metaspace", "llama"]


def _stream(tokenizer: Tokenizer, output_ids: list[int], prompt_ids: list[int] | None = None) -> list[str]:
    detok = tokenizer.detokenizer(prompt_ids or ())
    pieces = [detok.add(i) for i in output_ids]
    pieces.append(detok.flush())
    return pieces


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(n))


# --- the test tokenizers are what they claim to be --------------------------------------------


def test_bytelevel_tokenizer_splits_multibyte_characters(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["bytelevel"]
    ids = tok.encode("".join(CORPUS[:5]))
    split = [i for i in ids if "\ufffd" in tok.decode([i])]
    assert split, "the byte-level test tokenizer should split some multibyte characters"


def test_llama_style_tokenizer_uses_byte_fallback(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["llama"]
    ids = tok.encode("日本", add_special_tokens=False)
    assert tok.hf_tokenizer.convert_ids_to_tokens(ids)[-6:] == [
        "<0xE6>",
        "<0x97>",
        "<0xA5>",
        "<0xE6>",
        "<0x9C>",
        "<0xAC>",
    ]


# --- incremental detokenization ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stream_equals_full_decode_without_prompt(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok, rng = tokenizers[kind], random.Random(kind)
    for _ in range(200):
        text = _random_text(rng, rng.randint(1, 30))
        ids = tok.encode(text, add_special_tokens=False)
        pieces = _stream(tok, ids)
        full = tok.hf_tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(pieces) == full
        assert all("\ufffd" not in p for p in pieces)  # the texts have none, so no piece may
        for p in pieces:
            p.encode("utf-8")  # no lone surrogates: each piece is valid text on its own


@pytest.mark.parametrize("kind", KINDS)
def test_stream_after_prompt_is_the_text_the_output_adds(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok, rng = tokenizers[kind], random.Random(kind + "prompt")
    for _ in range(200):
        prompt = tok.encode(_random_text(rng, rng.randint(1, 12)))
        output = tok.encode(_random_text(rng, rng.randint(1, 30)), add_special_tokens=False)
        pieces = _stream(tok, output, prompt)
        prompt_text = tok.decode(prompt)
        assert "".join(pieces) == tok.decode(prompt + output)[len(prompt_text) :]
        assert all("\ufffd" not in p for p in pieces)
        if kind == "bytelevel":  # byte-level decoding has no context: same as decoding the output alone
            assert "".join(pieces) == tok.hf_tokenizer.decode(output, skip_special_tokens=True)


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_stream_of_random_ids_equals_full_decode(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    """Sampled ids need not form valid UTF-8; the stream must still match decode exactly."""
    tok, rng = tokenizers[kind], random.Random(kind + "ids")
    for _ in range(300):
        ids = [rng.randrange(tok.vocab_size) for _ in range(rng.randint(1, 40))]
        pieces = _stream(tok, ids)
        full = tok.hf_tokenizer.decode(ids, skip_special_tokens=True)
        assert "".join(pieces) == full
        if kind == "metaspace":
            # The window decoder holds any text ending in U+FFFD until later bytes settle it; the
            # byte-level one holds only an incomplete character (the equality above shows that
            # no U+FFFD it sent was one that later bytes would have completed).
            assert all(not p.endswith("\ufffd") for p in pieces[:-1])


def test_byte_level_stream_matches_the_window_decoder_and_added_tokens(folders: dict[str, Path]) -> None:
    """The byte-level fast path against the tokenizer's own decode and the window decoder it
    replaces, with added tokens spelled in plain text (which the byte-level decoder keeps as is)."""
    from transformers import AutoTokenizer

    from model_runtime.detokenizer import ByteLevelDetokenizer

    hf = AutoTokenizer.from_pretrained(str(folders["bytelevel"]))
    hf.add_tokens(["<think>", "two words", "naïve·"])  # not special: decoded as written
    tok = Tokenizer(hf, ChatTemplate(CHATML_TEMPLATE), frozenset())
    added = [hf.convert_tokens_to_ids(t) for t in ("<think>", "two words", "naïve·")]
    rng = random.Random("byte-level")
    for _ in range(300):
        ids = [rng.choice(added) if rng.random() < 0.1 else rng.randrange(tok.vocab_size) for _ in range(40)]
        fast = tok.detokenizer()
        assert isinstance(fast, ByteLevelDetokenizer)
        window = IncrementalDetokenizer(tok.decode, (), tok.special_ids)
        streamed = "".join([fast.add(i) for i in ids] + [fast.flush()])
        assert streamed == tok.decode(ids) == "".join([window.add(i) for i in ids] + [window.flush()])


def test_stream_of_random_byte_fallback_ids_equals_full_decode(tokenizers: dict[str, Tokenizer]) -> None:
    """Random word-piece and special ids mixed with characters spelled in <0xNN> tokens.

    (ByteFallback turns a whole run of byte tokens into U+FFFD when any byte in it is invalid,
    so after an invalid run the stream keeps characters it already sent; valid runs must match.)
    """
    tok, rng = tokenizers["llama"], random.Random("bytefallback")
    words = list(range(259, tok.vocab_size))  # 0-2 are special, 3-258 the byte tokens
    spelled = [tok.encode(c, add_special_tokens=False)[1:] for c in "éñß€日本語🙂🚀Ω한"]
    assert all(len(ids) >= 2 and all(3 <= i < 259 for i in ids) for ids in spelled)
    for _ in range(300):
        ids: list[int] = []
        for _ in range(rng.randint(1, 25)):
            draw = rng.random()
            if draw < 0.5:
                ids.append(rng.choice(words))
            elif draw < 0.6:
                ids.append(rng.randrange(3))  # <unk>, <s>, </s>
            else:
                ids += rng.choice(spelled)
        prompt = tok.encode(_random_text(rng, 3))
        pieces = _stream(tok, ids, prompt)
        assert "".join(pieces) == tok.decode(prompt + ids)[len(tok.decode(prompt)) :]
        assert all("\ufffd" not in p for p in pieces)


def test_multibyte_character_is_held_until_complete(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["llama"]
    ids = tok.encode("a 日本", add_special_tokens=False)
    assert len(ids) >= 6
    pieces = _stream(tok, ids)
    # Each 3-byte character comes out whole, when its third byte token arrives.
    assert pieces[-7:] == ["", "", "日", "", "", "本", ""]


def test_flush_returns_an_incomplete_character_as_decode_does(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["llama"]
    ids = tok.encode("ok 日", add_special_tokens=False)[:-1]  # stop one byte short
    detok = tok.detokenizer()
    streamed = "".join(detok.add(i) for i in ids)
    assert streamed == "ok "
    assert streamed + detok.flush() == tok.hf_tokenizer.decode(ids, skip_special_tokens=True)
    assert detok.flush() == ""


@pytest.mark.parametrize("kind", ["metaspace", "llama"])
def test_sentencepiece_keeps_leading_spaces(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok = tokenizers[kind]
    prompt = tok.encode("The capital of France is")
    output = tok.encode(" Paris is the capital", add_special_tokens=False)
    pieces = _stream(tok, output, prompt)
    assert "".join(pieces) == " Paris is the capital"  # the first token's space is part of the answer
    for token, piece in zip(tok.hf_tokenizer.convert_ids_to_tokens(output), pieces, strict=False):
        assert piece.startswith(" ") == token.startswith("▁")  # a word's space comes with its first token
    assert "".join(_stream(tok, output)) == "Paris is the capital"  # as decode(output) says


def test_special_tokens_are_not_emitted(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["bytelevel"]
    hi, eos = tok.encode("hi café"), tok.hf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = hi + [eos] + hi + [eos, eos]
    pieces = _stream(tok, ids)
    assert "".join(pieces) == "hi caféhi café" == tok.hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_detokenizer_decodes_a_bounded_window() -> None:
    """Per-token cost must not grow with the output: only a few ids are decoded each time."""
    seen: list[int] = []

    def decode(ids: list[int]) -> str:
        seen.append(len(ids))
        return "".join(chr(0x61 + i % 26) for i in ids)

    detok = IncrementalDetokenizer(decode, prompt_ids=list(range(100)))
    out = "".join(detok.add(i) for i in range(5000))
    assert out == "".join(chr(0x61 + i % 26) for i in range(5000))
    assert max(seen) <= 6


# --- stop strings -----------------------------------------------------------------------------


def _run_stops(stop: tuple[str, ...], chunks: list[str]) -> tuple[str, bool]:
    matcher, out = StopMatcher(stop), []
    for chunk in chunks:
        text, stopped = matcher.push(chunk)
        out.append(text)
        if stopped:
            return "".join(out), True
    return "".join(out) + matcher.flush(), False


def _expected(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """The full text cut at the first stop string, for text that arrives in one piece."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _expected_chunked(chunks: list[str], stop: tuple[str, ...]) -> tuple[str, bool]:
    """What generation would produce: it stops after the first chunk that completes a stop string."""
    for end in range(1, len(chunks) + 1):
        text, stopped = _expected("".join(chunks[:end]), stop)
        if stopped:
            return text, True
    return "".join(chunks), False


def test_no_stop_strings_pass_text_through() -> None:
    matcher = StopMatcher(())
    assert matcher.push("abc") == ("abc", False)
    assert matcher.flush() == ""


def test_overlapping_stop_strings_stop_at_the_earliest_match() -> None:
    assert _run_stops(("ab", "abc"), list("xxabd")) == ("xx", True)
    assert _run_stops(("abc", "ab"), ["xxa", "bc"]) == ("xx", True)
    assert _run_stops(("aab",), list("aaab")) == ("a", True)
    # One chunk completing two stop strings: cut at the one that starts first.
    assert _run_stops(("bc", "abcd"), ["xa", "bcd"]) == ("x", True)
    # Generation ends as soon as a stop string completes: a longer one that would have started
    # earlier, had the text gone on, never gets the chance.
    assert _run_stops(("c", "abcd"), ["xab", "c", "d"]) == ("xab", True)


def test_partial_stop_is_held_then_released() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.push("hello ST") == ("hello ", False)
    assert matcher.push("O") == ("", False)
    assert matcher.push("P!") == ("", True)
    matcher = StopMatcher(("STOP",))
    assert matcher.push("hello ST") == ("hello ", False)
    assert matcher.push("OW") == ("STOW", False)  # the held text comes out once it cannot match
    assert matcher.push("ST") == ("", False)
    assert matcher.flush() == "ST"  # the sequence ended for another reason: release it


def test_stop_strings_split_across_tokens_never_leak(tokenizers: dict[str, Tokenizer]) -> None:
    """Every stop string cut out of the text, at every position and length, over real tokens."""
    tok = tokenizers["bytelevel"]
    text = "Señor Müller: 日本語 🙂 café!\nThe end."
    ids = tok.encode(text)
    for start in range(len(text)):
        for length in (1, 2, 3, 5):
            stop = (text[start : start + length],)
            detok = tok.detokenizer()
            got = _run_stops(stop, [detok.add(i) for i in ids] + [detok.flush()])
            assert got == _expected(text, stop), stop


def test_random_stops_and_chunkings_match_cutting_the_full_text() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice("abc日") for _ in range(rng.randint(0, 20)))
        stop = tuple("".join(rng.choice("abc日") for _ in range(rng.randint(1, 4))) for _ in range(3))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 6))))
        chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert _run_stops(stop, chunks) == _expected_chunked(chunks, stop), (text, stop, chunks)
        # With one stop string the first occurrence is also the first to complete.
        assert _run_stops(stop[:1], chunks) == _expected(text, stop[:1])


def test_empty_stop_string_is_ignored() -> None:
    assert _run_stops(("",), ["abc"]) == ("abc", False)


# --- chat templates ---------------------------------------------------------------------------

CHAT = [
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "Hi! ¿Qué tal? 日本"),
    ChatMessage("assistant", "Fine."),
    ChatMessage("user", "And now?"),
]


def test_chatml_renders_messages() -> None:
    text = ChatTemplate(CHATML_TEMPLATE).render(CHAT[:2])
    assert text == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi! ¿Qué tal? 日本<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without_prompt = ChatTemplate(CHATML_TEMPLATE).render(CHAT[:2], add_generation_prompt=False)
    assert without_prompt == text.removesuffix("<|im_start|>assistant\n")


def _as_dicts(messages: list[ChatMessage]) -> list[dict[str, object]]:
    return [{"role": m.role, "content": m.content, **m.extra} for m in messages]


@pytest.mark.parametrize("template", [CHATML_TEMPLATE, LLAMA2_TEMPLATE, FANCY_TEMPLATE])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_renders_like_transformers(
    tokenizers: dict[str, Tokenizer], template: str, add_generation_prompt: bool
) -> None:
    hf = tokenizers["llama"].hf_tokenizer
    messages = [
        *CHAT,
        ChatMessage("assistant", " ok ", {"name": "bot", "meta": {"é": [1, 2.5, None, True]}}),
        ChatMessage("user", "tools?", {"tool_calls": [{"id": "1", "args": "<b>&</b>"}], "skip": None}),
    ]
    if template is LLAMA2_TEMPLATE:
        messages = messages[:4]  # it requires alternating roles
    ours = ChatTemplate(template, hf.special_tokens_map).render(messages, add_generation_prompt)
    theirs = hf.apply_chat_template(
        _as_dicts(messages),
        chat_template=template,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    assert ours == theirs


def test_raise_exception_becomes_chat_template_error() -> None:
    template = ChatTemplate(LLAMA2_TEMPLATE, {"bos_token": "<s>", "eos_token": "</s>"})
    with pytest.raises(ChatTemplateError, match="^Conversation roles must alternate") as info:
        template.render([ChatMessage("user", "a"), ChatMessage("user", "b")])
    assert info.value.param == "messages"


def test_syntax_error_becomes_chat_template_error() -> None:
    with pytest.raises(ChatTemplateError, match="invalid chat template"):
        ChatTemplate("{% for m in messages %}{{ m.content }")


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ ''.__class__.__mro__ }}", "unsafe"),
        ("{{ messages.append(1) }}", "unsafe"),  # the environment is immutable
        ("{% set ns = namespace() %}{% set ns._x = 1 %}", "underscore"),
        ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    ],
)
def test_sandbox_blocks_escapes(source: str, message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message):
        ChatTemplate(source).render(CHAT)


def test_runtime_failures_become_chat_template_errors() -> None:
    with pytest.raises(ChatTemplateError, match="undefined"):
        ChatTemplate("{{ nothing.here }}").render(CHAT)
    with pytest.raises(ChatTemplateError, match="TypeError"):
        ChatTemplate("{{ 1 + messages[0].content }}").render(CHAT)
    with pytest.raises(ChatTemplateError, match="at least one"):
        ChatTemplate(CHATML_TEMPLATE).render([])


def test_generation_tag_and_globals_are_available() -> None:
    source = (
        "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{{ {'a': '<&>'} | tojson }}"
    )
    assert ChatTemplate(source).render(CHAT[:2]) == '[You are terse.][Hi! ¿Qué tal? 日本]4{"a": "<&>"}'


# --- the Tokenizer wrapper --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bytelevel", "llama"])
def test_render_chat_matches_apply_chat_template(tokenizers: dict[str, Tokenizer], kind: str) -> None:
    tok = tokenizers[kind]
    messages = CHAT[1:]  # user/assistant/user
    expected = tok.hf_tokenizer.apply_chat_template(_as_dicts(messages), add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert tok.render_chat(messages) == list(expected)


def test_chat_bos_is_not_doubled_but_plain_prompts_get_one(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["llama"]
    bos = tok.hf_tokenizer.bos_token_id
    ids = tok.render_chat(CHAT[1:2])
    assert ids[0] == bos and ids.count(bos) == 1
    assert tok.encode("Hello") == tok.hf_tokenizer.encode("Hello") and tok.encode("Hello")[0] == bos
    assert bos not in tok.encode("Hello", add_special_tokens=False)


def test_eos_ids_combine_tokenizer_and_generation_config(tokenizers: dict[str, Tokenizer]) -> None:
    bytelevel = tokenizers["bytelevel"].hf_tokenizer
    assert tokenizers["bytelevel"].eos_token_ids == frozenset(
        bytelevel.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    )
    assert tokenizers["llama"].eos_token_ids == frozenset({2})
    metaspace = tokenizers["metaspace"]
    assert metaspace.eos_token_ids == frozenset({metaspace.hf_tokenizer.eos_token_id})


def test_missing_chat_template_falls_back_to_chatml(tokenizers: dict[str, Tokenizer]) -> None:
    tok = tokenizers["metaspace"]
    assert tok.chat_template.source == CHATML_TEMPLATE
    text = tok.chat_template.render(CHAT[1:2])
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")
    assert tok.render_chat(CHAT[1:2]) == tok.encode(text, add_special_tokens=False)


def test_vocab_and_decode_agree_with_transformers(
    folders: dict[str, Path], tokenizers: dict[str, Tokenizer]
) -> None:
    for kind, tok in tokenizers.items():
        hf = AutoTokenizer.from_pretrained(str(folders[kind]))
        assert tok.vocab_size == len(hf)
        ids = tok.encode("café 日本 🙂 Paris")
        assert ids == hf.encode("café 日本 🙂 Paris")
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)


def test_lone_surrogates_are_an_invalid_prompt_not_a_crash(tokenizers: dict[str, Tokenizer]) -> None:
    tokenizer = tokenizers["bytelevel"]
    with pytest.raises(InvalidPrompt) as err:
        tokenizer.encode("bad \ud800 text")
    assert err.value.param == "prompt"
    with pytest.raises(InvalidPrompt) as err:
        tokenizer.render_chat([ChatMessage("user", "\udfff")])
    assert err.value.param == "messages"
