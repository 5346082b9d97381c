"""Answer parsing: the original postprocess as oracle, streaming on real token ids, fuzzing."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechgpt_agent.model import load_speech_tokenizer
from speechgpt_agent.parse import (
    Done,
    ParsedAnswer,
    StreamParser,
    TextDelta,
    TranscriptDelta,
    Units,
    parse_response,
)
from speechgpt_agent.testing.llm import make_tiny_speechgpt


@pytest.fixture(scope="module")
def tok_vocab(tmp_path_factory):
    folder = make_tiny_speechgpt(tmp_path_factory.mktemp("tiny-llm"), hidden_size=16, layers=1)
    return load_speech_tokenizer(folder)


def make_parser(tok_vocab, first_segment="auto", single_part=False):
    tok, v = tok_vocab
    c = v.control_ids
    return StreamParser(
        lambda ids: tok.decode(list(ids), skip_special_tokens=True),
        unit_token_offset=v.unit_token_offset, sosp_id=v.sosp_id, eosp_id=v.eosp_id,
        vocab_size=len(tok), end_ids={v.eos_id, c["[Human]"]},
        ignore_ids={v.bos_id, c["[SpeechGPT]"], c["<eoh>"], c["<eos>"]},
        first_segment=first_segment, single_part=single_part,
    )


def stream(tok_vocab, ids, first_segment="auto", finish="stop"):
    parser = make_parser(tok_vocab, first_segment)
    events = [e for t in ids for e in parser.feed(t)]
    return events + parser.close(finish)


def check_consistent(events):
    """Deltas add up to Done, which comes last and once."""
    *deltas, done = events
    assert isinstance(done, Done) and not any(isinstance(e, Done) for e in deltas)
    assert "".join(e.text for e in deltas if isinstance(e, TranscriptDelta)) == done.transcript
    assert "".join(e.text for e in deltas if isinstance(e, TextDelta)) == done.text
    assert tuple(u for e in deltas if isinstance(e, Units) for u in e.ids) == done.units
    assert all(e.text for e in deltas if isinstance(e, (TextDelta, TranscriptDelta)))
    return done


def original_postprocess(response):
    """What cli_infer.py's postprocess extracts (its regexes, restated), plus its unit reading."""
    def between(text, tag1, tag2):
        m = re.search(f"{re.escape(tag1)}(.*?){re.escape(tag2)}", text, re.DOTALL)
        return m.group(1) if m else ""

    answer = between(response + "<eoa>", "[SpeechGPT] :", "<eoa>")
    tq = between(response, "[SpeechGPT] :", "; [ta]") if "[ta]" in response else ""
    ta = between(response, "[ta]", "; [ua]") if "[ta]" in response else ""
    units = [int(n) for n in re.findall(r"<(\d+)>", answer)] if "<sosp>" in answer else []
    return {"answer": answer, "tq": tq, "ta": ta, "units": units}


# --- whole-text parsing ---------------------------------------------------------------------------


def test_readme_sample():
    parsed = parse_response(
        "[Human]: <sosp><661><987><eosp><eoh>. [SpeechGPT]: What is a bad term for poop?; [ta] A "
        "bad term for poop is excrement.; [ua] <sosp><497><63><264><eosp><eoa>.")
    assert parsed == ParsedAnswer("What is a bad term for poop?",
                                  "A bad term for poop is excrement.", (497, 63, 264), True)


@pytest.mark.parametrize("text, expected", [
    # the original CLI's decoded form, spaces around every added token
    (("[Human] : <sosp> <1> <eosp> <eoh> . [SpeechGPT] : Hi there ; [ta] Hello! ; [ua] <sosp> "
      "<5> <6> <eosp> <eoa> ."), ("Hi there", "Hello!", (5, 6), True)),
    ("q;[ta]a;[ua]<sosp><5><eosp><eoa>", ("q", "a", (5,), True)),
    ("[tq] q; [ta] a<eoa>", ("q", "a", (), True)),  # the paper's [tq] tag
    ("Lebron James is a player.<eoa>", ("", "Lebron James is a player.", (), True)),  # text Q
    (" today is a sunny day.<eoa>", ("", "today is a sunny day.", (), True)),  # ASR
    ("<sosp> <661> <987> <eosp> <eoa>", ("", "", (661, 987), True)),  # TTS
    ("[ta] a; [ua] <sosp><1><eosp><eoa>", ("", "a", (1,), True)),  # text in, speech out
    ("q; [ta] a; [ua] <sosp><1><2>", ("q", "a", (1, 2), False)),  # truncated in the units
    ("q; [ta] a; [ta] b<eoa>", ("q", "a b", (), True)),  # repeated tag
    ("a <7> b <sosp><8><eosp> c<eoa>", ("", "a b c", (8,), True)),  # stray unit dropped
    ("q; [ta] a; [ua] x <9> <1234> <007><eoa>", ("q", "a", (9,), True)),  # not units
    ("say a<1234>b<eoa>", ("", "say a<1234>b", (), True)),
    ("a<eoa> [Human]: more [SpeechGPT]: b<eoa>", ("", "a", (), True)),
    ("a </s> b", ("", "a", (), False)),
    ("q; [u", ("", "q; [u", (), False)),
    ("", ("", "", (), False)),
])
def test_parse_response_cases(text, expected):
    assert parse_response(text) == ParsedAnswer(*expected)


_WORDS = st.text(alphabet="abcdefgh .,?!'-", min_size=1, max_size=30).filter(str.strip)
_UNITS = st.lists(st.integers(0, 999), min_size=1, max_size=12)


def _original_style(transcript, text, units):
    """An answer as the original CLI printed it: 4.33's decode puts spaces around added tokens."""
    unit_str = " ".join(["<sosp>", *(f"<{u}>" for u in units), "<eosp>"])
    return f"[Human] : <sosp> <1> <eosp> <eoh> . [SpeechGPT] : {transcript}; [ta] {text}; [ua] {unit_str} <eoa>."


@given(_WORDS, _WORDS, _UNITS)
def test_parse_response_agrees_with_the_original_postprocess(transcript, text, units):
    response = _original_style(transcript, text, units)
    original = original_postprocess(response)
    parsed = parse_response(response)
    assert parsed.transcript == original["tq"].strip()
    assert parsed.text == original["ta"].strip()
    assert list(parsed.units) == original["units"]
    assert parsed.complete


@given(_WORDS)
def test_untagged_answers_agree_with_the_original(text):
    original = original_postprocess(f"[SpeechGPT] : {text}")
    assert parse_response(f"[SpeechGPT] : {text}").text == original["answer"].strip()


# --- streaming on real token ids ------------------------------------------------------------------


def test_stream_of_a_chain_of_modality_answer(tok_vocab):
    tok, v = tok_vocab
    answer = "What is a term?; [ta] A term is here.; [ua] <sosp><497><63><eosp><eoa>."
    ids = tok.encode(answer, add_special_tokens=False)
    parser = make_parser(tok_vocab)
    seen = []
    for t in ids:
        events = parser.feed(t)
        seen.extend(events)
        if t == v.unit_token_offset + 497:
            assert events == [Units((497,))]  # units leave as soon as they are generated
    events = seen + parser.close("stop")
    done = check_consistent(events)
    assert (done.transcript, done.text, done.units, done.complete) == (
        "What is a term?", "A term is here.", (497, 63), True)
    # auto mode: the transcript is held back until [ta] tells it is one, then sent whole
    assert [e for e in events if isinstance(e, TranscriptDelta)] == [TranscriptDelta("What is a term?")]
    assert parser.feed(5) == [] and parser.close() == []


@pytest.mark.parametrize("mode, kind", [("transcript", TranscriptDelta), ("text", TextDelta)])
def test_explicit_first_segment_streams_at_once(tok_vocab, mode, kind):
    tok, _ = tok_vocab
    ids = tok.encode("hello there friend", add_special_tokens=False)
    parser = make_parser(tok_vocab, mode)
    early = [e for t in ids for e in parser.feed(t)]
    assert early and all(isinstance(e, kind) for e in early)
    done = check_consistent(early + parser.close("length"))
    assert done.finish_reason == "length" and not done.complete
    assert (done.transcript if mode == "transcript" else done.text) == "hello there friend"


@pytest.mark.parametrize("rest", ["; [ta] tokyo; [ua] <sosp><497><63><eosp><eoa>.", " [ua] <sosp><497><eosp><eoa>",
                                  "<sosp><497><63><eosp><eoa>"])
def test_single_part_answer_ends_at_the_first_tag(tok_vocab, rest):
    """ASR: a model that runs on into a chain-of-modality answer gives its transcription alone."""
    tok, _ = tok_vocab
    ids = tok.encode("what is the capital of japan" + rest, add_special_tokens=False)
    parser = make_parser(tok_vocab, "text", single_part=True)
    events = []
    for i, t in enumerate(ids):
        events += parser.feed(t)
        if parser.done:
            break
    assert i < len(ids) - 2  # generation can stop at the tag, before the rest is generated
    done = check_consistent(events + parser.close("stop"))
    assert (done.transcript, done.text, done.units, done.complete) == ("", "what is the capital of japan", (), True)
    # without single_part the answer's text or units join the transcription
    plain = stream(tok_vocab, ids, "text")[-1]
    assert (plain.text, plain.units) != (done.text, done.units)


def test_single_part_keeps_a_leading_tag_and_a_plain_answer(tok_vocab):
    tok, _ = tok_vocab
    for answer in ("[ta] hello there<eoa>", "hello there<eoa>"):
        ids = tok.encode(answer, add_special_tokens=False)
        parser = make_parser(tok_vocab, "text", single_part=True)
        events = [e for t in ids for e in parser.feed(t)]
        done = check_consistent(events + parser.close("stop"))
        assert (done.text, done.complete) == ("hello there", True)


def test_multibyte_characters_are_never_split(tok_vocab):
    tok, _ = tok_vocab
    text = "héllo € 日本 ok"
    ids = tok.encode(text, add_special_tokens=False)
    events = stream(tok_vocab, ids, "text")
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 3 and all("\ufffd" not in d for d in deltas)
    assert check_consistent(events).text == text


def test_markers_split_over_tokens_and_spacing(tok_vocab):
    tok, _ = tok_vocab
    for sep in ("; [ta] ", ";[ta]", " ; [ta]  ", " [ta] "):
        ids = tok.encode(f"a b{sep}c d<eoa>", add_special_tokens=False)
        done = check_consistent(stream(tok_vocab, ids))
        assert (done.transcript, done.text, done.complete) == ("a b", "c d", True)


def test_end_tokens_and_truncation(tok_vocab):
    tok, v = tok_vocab
    ids = tok.encode("answer", add_special_tokens=False)
    done = check_consistent(stream(tok_vocab, [*ids, v.eos_id, *ids]))
    assert (done.text, done.complete) == ("answer", False)
    human = v.control_ids["[Human]"]
    done = check_consistent(stream(tok_vocab, [*ids, human, *ids], finish="length"))
    assert done.text == "answer" and done.finish_reason == "length"


def _segments():
    text = st.text(alphabet="abcxyz .,?!;<>[]0123456789é€", max_size=12)
    marker = st.tuples(st.sampled_from(["", ";", " ", "; ", " ; "]),
                       st.sampled_from(["[ta]", "[ua]", "[tq]", "<eoa>"]),
                       st.sampled_from(["", " ", "  "])).map("".join)
    units = st.lists(st.integers(0, 999), max_size=5).map(lambda us: "".join(f"<{u}>" for u in us))
    span = units.map(lambda s: f"<sosp>{s}<eosp>")
    return st.lists(st.one_of(text, marker, units, span, st.just("<sosp>"), st.just("<eosp>")),
                    max_size=12).map("".join)


def _squash(s):
    return " ".join(s.split())


@settings(max_examples=200, deadline=None)
@given(_segments())
def test_stream_equals_whole_text_parsing(tok_vocab, answer):
    """Token-by-token parsing of the ids gives parse_response's answer (up to spacing)."""
    tok, _ = tok_vocab
    ids = tok.encode(answer, add_special_tokens=False)
    done = check_consistent(stream(tok_vocab, ids))
    for whole in (parse_response(answer), parse_response(tok.decode(ids))):
        assert done.units == whole.units
        assert done.complete == whole.complete
        assert _squash(done.transcript) == _squash(whole.transcript)
        assert _squash(done.text) == _squash(whole.text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(-3, 1410), max_size=60),
       st.sampled_from(["auto", "transcript", "text"]),
       st.sampled_from(["stop", "length", "cancelled", "error"]))
def test_arbitrary_token_ids_never_raise(tok_vocab, ids, mode, finish):
    events = stream(tok_vocab, ids, mode, finish)
    done = check_consistent(events)
    assert done.finish_reason == finish
    assert all(0 <= u < 1000 for u in done.units)
    parser = make_parser(tok_vocab, mode)
    batched = parser.feed_many(ids) + parser.close(finish)
    assert batched[-1] == done  # feeding all at once: same answer, merged deltas
    check_consistent(batched)


def test_invalid_first_segment(tok_vocab):
    with pytest.raises(ValueError, match="first_segment"):
        make_parser(tok_vocab, "speech")
