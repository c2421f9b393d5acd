"""Incremental detokenizer: streamed text equals a full decode, UTF-8 safety, stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.detokenizer import DetokenizerStep, IncrementalDetokenizer
from engine.tokenizer import Tokenizer

FFFD = "\ufffd"
MULTIBYTE_TEXTS = [
    "héllo wörld, ça va? naïve café",
    "世界你好，今天天气很好。",
    "🎉🚀 party 👩‍👩‍👧 family 🇳🇴",
    "mixed: héllo 世界 🎉 and ASCII, then Ελληνικά and русский",
]
HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def tok(bundled_model_dir: Path) -> Tokenizer:
    return Tokenizer.load(bundled_model_dir)


@pytest.fixture(scope="module")
def prompt(tok: Tokenizer) -> list[int]:
    return tok.apply_chat_template([{"role": "user", "content": "Say something."}])


def _stream(
    tok: Tokenizer,
    prompt: Sequence[int],
    ids: Sequence[int],
    sizes: Sequence[int] = (),
    **kwargs: object,
) -> tuple[list[DetokenizerStep], str, IncrementalDetokenizer]:
    """Feed `ids` in chunks of `sizes` (then one at a time) until done or a stop string hits."""
    detok = IncrementalDetokenizer(tok, prompt, **kwargs)  # type: ignore[arg-type]
    steps: list[DetokenizerStep] = []
    sizes_iter = iter(sizes)
    i = 0
    while i < len(ids):
        n = next(sizes_iter, 1)
        steps.append(detok.add(ids[i : i + n]))
        i += n
        if steps[-1].stop_string is not None:
            break
    rest = detok.flush()
    return steps, rest, detok


class CountingTokenizer:
    """The real tokenizer, counting the ids every decode is given (the work done)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.special_token_ids = tok.special_token_ids
        self.decodes_bytes_locally = tok.decodes_bytes_locally
        self.decoded_ids = 0
        self.calls = 0

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        self.decoded_ids += len(token_ids)
        self.calls += 1
        return self.tok.decode(token_ids, skip_special_tokens=skip_special_tokens)


def _joined(steps: list[DetokenizerStep], rest: str) -> str:
    return "".join(step.text_delta for step in steps) + rest


def final_text(tok: Tokenizer, ids: Sequence[int]) -> str:
    """What a finished request shows of `ids` where no stray byte was released early: HF's
    decode, less the U+FFFD of a character whose last bytes never came (dropped, as vLLM
    drops them)."""
    return tok.decode(ids).rstrip(FFFD)


def assert_shows(text: str, tok: Tokenizer, ids: Sequence[int]) -> None:
    """`text` is HF's decode of `ids` less a run of U+FFFD at its end: the held bytes that
    never made a character (stray bytes released mid-stream stay in it)."""
    decoded = tok.decode(ids)
    assert decoded.startswith(text) and set(decoded[len(text) :]) <= {FFFD}, (text, decoded)


def _reference_stop(text: str, stops: Sequence[str], include: bool) -> tuple[str, str | None]:
    """What checking after every character finds: the first stop string to complete."""
    for end in range(1, len(text) + 1):
        hits = [s for s in stops if text[:end].endswith(s)]
        if hits:
            stop = max(hits, key=len)
            return (text[:end] if include else text[: end - len(stop)]), stop
    return text, None


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_multibyte_stream_never_shows_replacement_char(
    tok: Tokenizer, prompt: list[int], text: str
) -> None:
    ids = tok.encode(text)
    if any(ord(c) > 0x7FF for c in text):
        # The test means something only if characters really are split over tokens.
        assert any(FFFD in tok.decode([i]) for i in ids)
    steps, rest, detok = _stream(tok, prompt, ids)
    assert all(FFFD not in step.text_delta for step in steps)
    assert _joined(steps, rest) == detok.output_text == tok.decode(ids) == text
    assert all(step.stop_string is None for step in steps)


@HYPOTHESIS
@given(
    text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters=FFFD), max_size=30),
    data=st.data(),
)
def test_random_text_in_random_chunks(
    tok: Tokenizer, prompt: list[int], text: str, data: st.DataObject
) -> None:
    ids = tok.encode(text)
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=len(ids)))
    steps, rest, detok = _stream(tok, prompt, ids, sizes)
    if FFFD not in tok.decode(ids):  # the vocabulary lacks a few rare lead bytes (e.g. 0xF1)
        assert all(FFFD not in step.text_delta for step in steps)
    assert _joined(steps, rest) == detok.output_text
    assert_shows(detok.output_text, tok, ids)


@HYPOTHESIS
@given(ids=st.lists(st.integers(17, 49151), max_size=30), data=st.data())
def test_random_token_ids_in_random_chunks(
    tok: Tokenizer, prompt: list[int], ids: list[int], data: st.DataObject
) -> None:
    """Arbitrary ids may form invalid UTF-8; the stream still matches a full decode
    (a U+FFFD released early that later bytes turned into a character would not)."""
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=len(ids)))
    steps, rest, detok = _stream(tok, prompt, ids, sizes)
    assert _joined(steps, rest) == detok.output_text
    assert_shows(detok.output_text, tok, ids)


@pytest.fixture(scope="module")
def byte_tokens(tok: Tokenizer) -> list[int]:
    """Tokens holding a byte no character is whole in (lead and continuation bytes)."""
    found = [i for i in range(17, 300) if tok.decode([i]) == FFFD]
    assert len(found) > 100
    return found


@HYPOTHESIS
@given(data=st.data())
def test_bytes_that_never_make_a_character_still_stream(
    tok: Tokenizer, prompt: list[int], byte_tokens: list[int], data: st.DataObject
) -> None:
    """A model emitting stray bytes (a few of which do pair into characters): the text
    streams with at most a few characters held back, and still equals a full decode."""
    ids = data.draw(st.lists(st.sampled_from(byte_tokens), min_size=20, max_size=120))
    ids += tok.encode(" 🎉 done")[: data.draw(st.integers(0, 5))]
    sizes = data.draw(st.lists(st.integers(1, 3), max_size=len(ids)))
    steps, rest, detok = _stream(tok, prompt, ids, sizes)
    streamed = "".join(step.text_delta for step in steps)
    assert len(streamed) >= len(tok.decode(ids)) - 12
    assert streamed + rest == detok.output_text
    assert_shows(detok.output_text, tok, ids)


def test_stray_bytes_cost_constant_work_per_token(
    tok: Tokenizer, prompt: list[int], byte_tokens: list[int]
) -> None:
    """Held-back text does not make each step decode everything held (it once did: 4000
    stray bytes took 2.4 s of the engine thread, 8000 four times that)."""
    counting = CountingTokenizer(tok)
    ids = [byte_tokens[i % 7] for i in range(2000)]  # seven continuation bytes, cycled
    detok = IncrementalDetokenizer(counting, prompt)  # type: ignore[arg-type]
    released = sum(len(detok.add([i]).text_delta) for i in ids)
    assert released >= len(ids) - 8
    detok.flush()
    assert_shows(detok.output_text, tok, ids)
    assert counting.decoded_ids < 40 * len(ids)


def test_ids_that_decode_to_nothing_cost_a_bounded_number_of_decodes(
    tok: Tokenizer, prompt: list[int]
) -> None:
    """Ids past the vocabulary (a model's padding rows) decode to nothing; held, they
    must not send the settling of stray bytes looking back over all of them each step."""
    counting = CountingTokenizer(tok)
    padding = tok.vocab_size + 8
    assert tok.decode([padding]) == ""
    ids = [*tok.encode(" hi"), *[padding] * 600]
    detok = IncrementalDetokenizer(counting, prompt)  # type: ignore[arg-type]
    for i in ids:
        detok.add([i])
    detok.flush()
    assert detok.output_text == " hi"
    assert counting.calls < 4 * len(ids)


def test_repeated_special_tokens_cost_nothing(tok: Tokenizer, prompt: list[int]) -> None:
    """A model that keeps sampling a special token (EOS under ignore_eos once its answer
    is done) adds nothing to decode: 4000 of them took 30 s of the engine thread."""
    counting = CountingTokenizer(tok)
    answer = tok.encode(" the end")
    ids = [*answer, *[2, 1] * 1000, *tok.encode(" more")]
    detok = IncrementalDetokenizer(counting, prompt)  # type: ignore[arg-type]
    for i in ids:
        detok.add([i])
    detok.flush()
    assert detok.output_text == tok.decode(ids) == " the end more"
    assert counting.decoded_ids < 100
    kept = IncrementalDetokenizer(tok, prompt, skip_special_tokens=False)
    for i in ids[:6]:
        kept.add([i])
    kept.flush()
    assert kept.output_text == tok.decode(ids[:6], skip_special_tokens=False)
    assert kept.output_text == " the end" + "<|im_end|><|im_start|>" * 2


_PIECES = ["a", "b", "ab", " ", "é", "世", "🎉", "\n"]


@HYPOTHESIS
@given(
    pieces=st.lists(st.sampled_from(_PIECES), max_size=20),
    stops=st.lists(
        st.lists(st.sampled_from(_PIECES), min_size=1, max_size=3).map("".join),
        min_size=1,
        max_size=3,
    ),
    include=st.booleans(),
    data=st.data(),
)
def test_stop_strings_match_reference(
    tok: Tokenizer,
    prompt: list[int],
    pieces: list[str],
    stops: list[str],
    include: bool,
    data: st.DataObject,
) -> None:
    ids = tok.encode("".join(pieces))
    text = final_text(tok, ids)
    sizes = data.draw(st.lists(st.integers(1, 4), max_size=len(ids)))
    detok = IncrementalDetokenizer(tok, prompt, stop=stops, include_stop_str_in_output=include)
    released = ""
    fed = 0
    matched = None
    for n in [*sizes, *[1] * len(ids)]:
        if fed >= len(ids):
            break
        step = detok.add(ids[fed : fed + n])
        fed += n
        released += step.text_delta
        assert FFFD not in step.text_delta
        if step.stop_string is not None:
            matched = step.stop_string
            break
        decoded = tok.decode(ids[:fed])
        if not decoded.endswith(FFFD):
            # Held back: exactly the longest tail that could still grow into a stop string.
            held = decoded[len(released) :]
            assert decoded.startswith(released)
            candidates = [k for k in range(len(decoded) + 1) if _is_stop_prefix(decoded[k:], stops)]
            assert held == decoded[min(candidates) :]
    released += detok.flush()
    expected, expected_stop = _reference_stop(text, stops, include)
    assert released == detok.output_text == expected
    assert (matched or detok.stop_string) == expected_stop
    if not include:
        assert not any(stop in released for stop in stops)


def _is_stop_prefix(tail: str, stops: Sequence[str]) -> bool:
    return tail == "" or any(s.startswith(tail) and s != tail for s in stops)


def test_stop_string_split_across_tokens(tok: Tokenizer, prompt: list[int]) -> None:
    ids = tok.encode("Hello world STOP and more")
    assert "STOP" not in tok.convert_ids_to_tokens(ids)  # split, e.g. ' ST' + 'OP'
    steps, rest, detok = _stream(tok, prompt, ids, stop=["STOP"])
    assert all("S" not in step.text_delta for step in steps)  # never leaks, even partly
    assert steps[-1].stop_string == "STOP"
    assert rest == ""
    assert _joined(steps, rest) == detok.output_text == "Hello world "
    with pytest.raises(RuntimeError):
        detok.add([tok.encode("x")[0]])


def test_stop_strings_are_not_checked_before_min_tokens(tok: Tokenizer, prompt: list[int]) -> None:
    ids = tok.encode("one STOP two STOP three")
    detok = IncrementalDetokenizer(tok, prompt, stop=["STOP"])
    cut = len(tok.encode("one STOP two"))
    released = [detok.add([i], check_stop=False).text_delta for i in ids[:cut]]
    assert "".join(released) == "one STOP two"  # nothing held back, nothing stopped
    stopped = None
    for i in ids[cut:]:
        stopped = detok.add([i]).stop_string
        if stopped:
            break
    assert stopped == "STOP"  # checked again once past min_tokens
    assert detok.output_text == "one STOP two "


def test_stop_string_inside_one_token(tok: Tokenizer, prompt: list[int]) -> None:
    ids = tok.encode("Say hello there")
    assert " hello" in [tok.decode([i]) for i in ids]
    steps, rest, detok = _stream(tok, prompt, ids, stop=["ell"])
    assert detok.output_text == _joined(steps, rest) == "Say h"
    steps, rest, detok = _stream(tok, prompt, ids, stop=["ell"], include_stop_str_in_output=True)
    assert detok.output_text == _joined(steps, rest) == "Say hell"
    assert detok.stop_string == "ell"


def test_first_completed_stop_string_wins(tok: Tokenizer, prompt: list[int]) -> None:
    ids = tok.encode("Say hello there")
    _, _, detok = _stream(tok, prompt, ids, stop=["there", "hello"])
    assert (detok.output_text, detok.stop_string) == ("Say ", "hello")
    # 'o' completes before 'lo there' does, however the tokens are grouped.
    for sizes in ([1] * len(ids), [len(ids)]):
        _, _, detok = _stream(tok, prompt, ids, sizes, stop=["lo there", "o"])
        assert (detok.output_text, detok.stop_string) == ("Say hell", "o")


def test_held_back_text_is_released_at_flush(tok: Tokenizer, prompt: list[int]) -> None:
    ids = tok.encode("The end is ne")
    steps, rest, detok = _stream(tok, prompt, ids, stop=["near"])
    assert "".join(step.text_delta for step in steps) == "The end is "
    assert rest == "ne"
    assert detok.output_text == "The end is ne"
    assert detok.stop_string is None
    assert detok.flush() == ""  # idempotent


def test_stop_string_that_never_completes(tok: Tokenizer, prompt: list[int]) -> None:
    text = "STOP STOPP STOPPE ST done"
    steps, rest, detok = _stream(tok, prompt, tok.encode(text), stop=["STOPPED"])
    assert _joined(steps, rest) == detok.output_text == text
    assert detok.stop_string is None


def test_stop_string_in_prompt_is_ignored(tok: Tokenizer) -> None:
    prompt = tok.encode("please ST")
    ids = tok.encode("OP now STOP")
    steps, rest, detok = _stream(tok, prompt, ids, stop=["STOP"])
    assert detok.output_text == _joined(steps, rest) == tok.decode(ids)[: -len("STOP")]


def test_an_incomplete_character_is_dropped_at_flush(tok: Tokenizer, prompt: list[int]) -> None:
    ids = tok.encode("ok 世")
    assert tok.decode(ids[:-1]).endswith(FFFD)
    steps, rest, detok = _stream(tok, prompt, ids[:-1])
    streamed = "".join(step.text_delta for step in steps)
    assert streamed.startswith("ok")
    assert FFFD not in streamed + rest
    assert streamed + rest == detok.output_text == tok.decode(ids[:-1]).rstrip(FFFD)


def test_skip_special_tokens(tok: Tokenizer, prompt: list[int]) -> None:
    ids = [*tok.encode("hi there"), 2]
    _, _, detok = _stream(tok, prompt, ids)
    assert detok.output_text == "hi there"
    _, _, detok = _stream(tok, prompt, ids, skip_special_tokens=False)
    assert detok.output_text == "hi there<|im_end|>"
    _, _, detok = _stream(tok, prompt, ids, skip_special_tokens=False, stop=["<|im_end|>"])
    assert (detok.output_text, detok.stop_string) == ("hi there", "<|im_end|>")


def test_leading_space_uses_prompt_context(tok: Tokenizer) -> None:
    prompt = tok.encode("One")
    ids = tok.encode(" two three")
    _, _, detok = _stream(tok, prompt, ids)
    assert detok.output_text == " two three"


def test_work_per_token_is_constant(tok: Tokenizer, prompt: list[int]) -> None:
    """Each step decodes a short window, never the whole output."""
    counting = CountingTokenizer(tok)
    ids = tok.encode(" ".join(MULTIBYTE_TEXTS) * 20)
    detok = IncrementalDetokenizer(counting, prompt, stop=["never seen"])  # type: ignore[arg-type]
    for i in ids:
        detok.add([i])
    detok.flush()
    assert detok.output_text == final_text(tok, ids)
    assert counting.decoded_ids < 12 * len(ids)


def test_rejects_empty_stop_string(tok: Tokenizer, prompt: list[int]) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        IncrementalDetokenizer(tok, prompt, stop=[""])


def byte_fallback_tokenizer() -> tuple[Tokenizer, dict[str, int]]:
    """A Llama-2-style SentencePiece BPE: `<0xNN>` byte tokens decoded by ByteFallback,
    which reads a run of them as one (all U+FFFD if any byte in it is bad)."""
    from tokenizers import AddedToken, decoders, models, normalizers
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["\u2581", "a", "b", "\u2581a", "\u2581b"]:
        vocab[piece] = len(vocab)
    rust = RustTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    rust.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    rust.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    rust.add_special_tokens([AddedToken(t, special=True) for t in ("<unk>", "<s>", "</s>")])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=rust, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    return Tokenizer(hf, frozenset({2})), vocab


@pytest.mark.parametrize(
    "run",
    [
        "E4B8AD" * 5 + "E4B8" + "AD",  # a long valid run: held until its last byte
        "FFFF" + "E4B8AD" * 4,  # one bad byte makes the whole run U+FFFD
        "E4B8" * 6 + "AD",
    ],
)
def test_byte_fallback_runs_are_decoded_whole(run: str) -> None:
    """Where decode reads a byte run as one, held text is never settled early: a byte
    at the end of the run can still turn its U+FFFDs into characters."""
    tok, vocab = byte_fallback_tokenizer()
    assert not tok.decodes_bytes_locally
    ids = [vocab[f"<0x{run[i : i + 2]}>"] for i in range(0, len(run), 2)] + [vocab["\u2581a"]]
    steps, rest, detok = _stream(tok, [1], ids)
    assert _joined(steps, rest) == detok.output_text
    assert_shows(detok.output_text, tok, ids)


def test_byte_level_bpe_decodes_bytes_locally(tok: Tokenizer) -> None:
    assert tok.decodes_bytes_locally


def test_a_character_formed_among_stray_bytes_does_not_stall_the_stream(tok: Tokenizer) -> None:
    """Hypothesis's find: a 4-byte character completed in the middle of stray bytes put
    the settling split inside it, and 13 characters waited for the end. The split now
    steps back before the character."""
    ids = [111] * 14 + [187] + [111] * 11 + tok.encode(" 🎉 done")[:1]
    steps, rest, _ = _stream(tok, tok.encode("Hello"), ids, [1, 1, 1, 1, 3, 3, 3, 3, 3])
    streamed = "".join(step.text_delta for step in steps)
    assert len(streamed) >= len(tok.decode(ids)) - 12
    assert_shows(streamed + rest, tok, ids)


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_character_cut_by_the_end_is_dropped_not_shown_as_a_replacement(
    tok: Tokenizer, prompt: list[int], cut: int
) -> None:
    """QA: `max_tokens` ending inside 🎉 left the answer ending in U+FFFD; vLLM drops the
    bytes no token will complete."""
    ids = tok.encode("🎉🎉")[:cut]
    steps, rest, detok = _stream(tok, prompt, ids)
    assert FFFD not in _joined(steps, rest)
    assert detok.output_text == "🎉" * tok.decode(ids).count("🎉")
