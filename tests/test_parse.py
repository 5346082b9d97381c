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
    return _TokVocab(load_speech_tokenizer(folder))


class _TokVocab(tuple):
    """(tokenizer, vocab) with a short repr, so that hypothesis' failure reports stay legible."""

    def __repr__(self):
        return "tok_vocab"


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
    ("q; [u", ("", "q", (), False)),  # a truncated marker is dropped
    ("twelve<eo", ("", "twelve", (), False)),
    ("twelve;", ("", "twelve", (), False)),
    ("q; [ta] a; [ua", ("q", "a", (), False)),
    ("q; [ta] a; <sosp><5><eosp><eoa>", ("q", "a", (5,), True)),  # ";" before units: no content
    ("x; [ta]<eoa>", ("", "x", (), True)),  # [ta] with no answer after it: x is the answer
    ("x; [ta]; [ua] <sosp><5><eosp><eoa>", ("x", "", (5,), True)),
    ("[SpeechGPT] : rome<eoa>", ("", "rome", (), True)),  # the speaker tag re-emitted
    ("[SpeechGPT]:[SpeechGPT] :q; [ta] a<eoa>", ("q", "a", (), True)),
    ("a [SpeechGPT]: b<eoa>", ("", "a b", (), True)),
    ("[Human]: <sosp><1><eosp><eoh>. [SpeechGPT]: [SpeechGPT] : rome<eoa>", ("", "rome", (), True)),
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


def test_text_first_segment_streams_at_once(tok_vocab):
    tok, _ = tok_vocab
    ids = tok.encode("hello there friend", add_special_tokens=False)
    parser = make_parser(tok_vocab, "text")
    early = [e for t in ids for e in parser.feed(t)]
    assert early and all(isinstance(e, TextDelta) for e in early)
    done = check_consistent(early + parser.close("length"))
    assert done.finish_reason == "length" and not done.complete
    assert done.text == "hello there friend"


@pytest.mark.parametrize("mode", ["transcript", "auto"])
@pytest.mark.parametrize("answer, expected", [
    ("rome<eoa>", ("", "rome", ())),  # plain text
    ("the capital is rome", ("", "the capital is rome", ())),  # plain text, cut short
    ("rome; [ta]<eoa>", ("", "rome", ())),  # [ta] only, nothing after it
    ("[ta] rome<eoa>", ("", "rome", ())),  # [ta] only, before the answer
    ("rome; [ua] <sosp><5><eosp><eoa>", ("", "rome", (5,))),  # no [ta]: no transcript
    ("capital of italy; [ta] rome<eoa>", ("capital of italy", "rome", ())),
])
def test_untagged_answer_to_a_spoken_question_is_the_text_answer(tok_vocab, mode, answer, expected):
    """What the original prints as the response when it finds no `[ta] ...; [ua]` is the answer."""
    tok, _ = tok_vocab
    ids = tok.encode(answer, add_special_tokens=False)
    events = stream(tok_vocab, ids, mode)
    done = check_consistent(events)
    assert (done.transcript, done.text, done.units) == expected
    assert not expected[0] or not any(isinstance(e, TranscriptDelta) and e.text != expected[0]
                                      for e in events)
    whole = parse_response(answer)
    assert (whole.transcript, whole.text, whole.units) == expected


def test_transcript_leaves_as_soon_as_the_answer_after_ta_begins(tok_vocab):
    tok, _ = tok_vocab
    ids = tok.encode("what is two plus two; [ta] four<eoa>", add_special_tokens=False)
    parser = make_parser(tok_vocab, "transcript")
    seen = []
    for t in ids:
        events = parser.feed(t)
        if any(isinstance(e, TranscriptDelta) for e in events):
            # the transcript and the first text of the answer leave together
            assert events == [TranscriptDelta("what is two plus two"), TextDelta("f")]
        seen += events
    assert check_consistent(seen + parser.close()).text == "four"


def test_reemitted_speaker_tag_is_dropped_with_its_colon(tok_vocab):
    tok, v = tok_vocab
    speaker = v.control_ids["[SpeechGPT]"]
    for answer in ("[SpeechGPT] : rome<eoa>", "[SpeechGPT]: rome<eoa>", "[SpeechGPT]rome<eoa>"):
        ids = tok.encode(answer, add_special_tokens=False)
        assert ids[0] == speaker  # one control token, as the model generates it
        done = check_consistent(stream(tok_vocab, ids, "transcript"))
        assert (done.transcript, done.text) == ("", "rome") == (parse_response(answer).transcript,
                                                                parse_response(answer).text)
    # a colon that follows no tag is content in both parsers
    ids = tok.encode(": rome<eoa>", add_special_tokens=False)
    assert check_consistent(stream(tok_vocab, ids)).text == ": rome" == parse_response(": rome<eoa>").text


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


_MARKER_WORDS = ("[ta]", "[ua]", "[tq]", "<eoa>", "[SpeechGPT]")
_MARKER_PREFIXES = sorted({w[:n] for w in _MARKER_WORDS for n in range(1, len(w))})


def _leaks_protocol(part):
    """A part that ends in a separator or in the beginning of a marker."""
    return part.endswith(";") or any(part.endswith(p) for p in _MARKER_PREFIXES)


def _segments():
    text = st.text(alphabet="abcxyz .,?!;:<>[]0123456789é€", max_size=12)
    marker = st.tuples(st.sampled_from(["", ";", " ", "; ", " ; "]),
                       st.sampled_from([*_MARKER_WORDS, "[SpeechGPT] :", *_MARKER_PREFIXES]),
                       st.sampled_from(["", " ", "  ", ":", " : "])).map("".join)
    units = st.lists(st.integers(0, 999), max_size=5).map(lambda us: "".join(f"<{u}>" for u in us))
    span = units.map(lambda s: f"<sosp>{s}<eosp>")
    return st.lists(st.one_of(text, marker, units, span, st.just("<sosp>"), st.just("<eosp>")),
                    max_size=12).map("".join)


def _squash(s):
    return " ".join(s.split())


@settings(max_examples=250, deadline=None)
@given(_segments(), st.sampled_from(["auto", "transcript"]),
       st.sampled_from(["stop", "length", "cancelled"]))
def test_stream_equals_whole_text_parsing(tok_vocab, answer, mode, finish):
    """Token-by-token parsing of the ids gives parse_response's answer (up to spacing).

    Covers truncated markers at the end, a re-emitted ``[SpeechGPT] :`` anywhere and untagged
    answers; a spoken question's parser ("transcript") reads the answer as "auto" does.
    """
    tok, _ = tok_vocab
    ids = tok.encode(answer, add_special_tokens=False)
    done = check_consistent(stream(tok_vocab, ids, mode, finish))
    for whole in (parse_response(answer), parse_response(tok.decode(ids))):
        assert done.units == whole.units
        assert done.complete == whole.complete
        assert _squash(done.transcript) == _squash(whole.transcript)
        assert _squash(done.text) == _squash(whole.text)


_PLAIN = st.text(alphabet="abcdefgh .,?!'", min_size=1, max_size=20).filter(str.strip)


@settings(max_examples=200, deadline=None)
@given(_PLAIN, _PLAIN, _UNITS, st.sampled_from(["cot", "text", "speaker", "untagged"]), st.data())
def test_truncated_answers_never_leak_protocol(tok_vocab, transcript, text, units, shape, data):
    """An answer cut after any token (max_new_tokens, a cancel) is a prefix of its parts.

    Nothing of a marker (``[``, ``[t``, ``twelve<``, ``twelve;``, ``...; [t``) is content;
    streaming and whole-text parsing of the cut answer agree.
    """
    tok, _ = tok_vocab
    unit_str = "".join(f"<{u}>" for u in units)
    answer = {"cot": f"{transcript}; [ta] {text}; [ua] <sosp>{unit_str}<eosp><eoa>",
              "text": f"[ta] {text}<eoa>",
              "speaker": f"[SpeechGPT] : {transcript}; [ta] {text}<eoa>",
              "untagged": f"{text}<eoa>"}[shape]
    ids = tok.encode(answer, add_special_tokens=False)
    cut = ids[:data.draw(st.integers(0, len(ids)), label="tokens")]
    mode = data.draw(st.sampled_from(["auto", "transcript"]), label="mode")
    finish = data.draw(st.sampled_from(["length", "cancelled"]), label="finish")
    done = check_consistent(stream(tok_vocab, cut, mode, finish))
    assert done.finish_reason == finish
    assert not _leaks_protocol(done.transcript) and not _leaks_protocol(done.text)
    true_transcript, true_text = _squash(transcript), _squash(text)
    got_transcript, got_text = _squash(done.transcript), _squash(done.text)
    assert true_transcript.startswith(got_transcript) if shape in ("cot", "speaker") else not got_transcript
    # before the answer after [ta] begins, what there is of the transcript is the text answer
    assert true_text.startswith(got_text) or (not got_transcript and true_transcript.startswith(got_text))
    assert done.units == tuple(units[:len(done.units)])
    whole = parse_response(tok.decode(cut))
    assert (_squash(whole.transcript), _squash(whole.text), whole.units) == (
        got_transcript, got_text, done.units)


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
