"""Streaming vocoder: equal to offline synthesis for any chunking, with the computed latency."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from speechgpt_agent.errors import UnitError
from speechgpt_agent.testing.vocoder import make_fairseq_codehifigan
from speechgpt_agent.vocoder import UnitVocoder

HOP = 320
TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny convs: 2 OpenMP threads spin-wait


@pytest.fixture(scope="module")
def vocoder(tmp_path_factory):
    return UnitVocoder.from_pretrained(
        make_fairseq_codehifigan(tmp_path_factory.mktemp("voc")), device="cpu"
    )


def _chunks(units: np.ndarray, chunking, rng: np.random.Generator):
    if chunking == "random":  # includes empty pushes
        start = 0
        while start < len(units):
            size = int(rng.integers(0, 6))
            yield slice(start, start + size)
            start += size
        return
    for start in range(0, len(units), chunking):
        yield slice(start, start + chunking)


def _stream_all(stream, units, chunking, rng, durations=None) -> np.ndarray:
    stream.reset()
    pieces = []
    for part in _chunks(units, chunking, rng):
        pieces.append(stream.push(units[part], None if durations is None else durations[part]))
        assert pieces[-1].dtype == np.float32 and pieces[-1].ndim == 1
    pieces.append(stream.flush())
    return np.concatenate(pieces)


@pytest.mark.parametrize("seed", range(6))
def test_stream_equals_offline_with_predicted_durations(vocoder, seed):
    rng = np.random.default_rng(seed)
    n = [1, 2, 60][seed] if seed < 3 else int(rng.integers(3, 61))
    units = rng.integers(0, 1000, n)
    expected = vocoder.synthesize(units)
    stream = vocoder.stream()
    for chunking in (1, 2, 3, 7, 25, n, "random"):
        got = _stream_all(stream, units, chunking, rng)
        assert got.shape == expected.shape, chunking
        assert np.abs(got - expected).max() <= TOLERANCE, chunking


@pytest.mark.parametrize("seed", range(3))
def test_stream_equals_offline_with_given_durations(vocoder, seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(1, 40))
    units, durations = rng.integers(0, 1000, n), rng.integers(0, 4, n)  # zeros skip a unit
    expected = vocoder.synthesize(units, durations)
    stream = vocoder.stream(predict_durations=False)
    for chunking in (1, 3, 25, "random"):
        got = _stream_all(stream, units, chunking, rng, durations)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= TOLERANCE


def test_lookahead_frames_is_the_generator_receptive_field(vocoder):
    """The last sample of frame i depends on frame i + lookahead_frames and no later frame.

    Measured with autograd (the far edge of the receptive field contributes ~1e-19, below
    float resolution of the samples themselves, but its gradient is exactly nonzero).
    """
    lookahead = vocoder.stream().lookahead_frames
    model = vocoder.model
    frames = torch.randn(
        1, model.config.model_in_dim, 60, generator=torch.Generator().manual_seed(0)
    )
    frames.requires_grad_(True)
    i = 20
    wav = model.synthesize_frames(frames)[0]
    (grad,) = torch.autograd.grad(wav[(i + 1) * HOP - 1], frames)
    reached = torch.nonzero(grad.abs().sum(dim=1)[0]).flatten()
    assert int(reached.max()) - i == lookahead


def test_one_frame_units_are_emitted_exactly_lookahead_frames_late(vocoder):
    stream = vocoder.stream(predict_durations=False)
    lookahead = stream.lookahead_frames
    assert stream.lookahead_units == lookahead  # no duration predictor in the path
    emitted = 0
    for k, unit in enumerate(np.random.default_rng(1).integers(0, 1000, lookahead + 10), start=1):
        emitted += stream.push(int(unit)).size
        complete_frames = max(0, k - lookahead)
        assert HOP * complete_frames <= emitted < HOP * (complete_frames + 1)


def test_audio_leaves_before_flush_once_lookahead_units_arrived(vocoder):
    units = np.random.default_rng(2).integers(0, 1000, 50)
    durations = vocoder.predict_durations(units)
    stream = vocoder.stream()
    assert stream.lookahead_units == stream.lookahead_frames + 2  # two k=3 convolutions over units
    emitted, first_audio = 0, None
    for k in range(1, len(units) + 1):
        emitted += stream.push(units[k - 1 : k]).size
        if emitted and first_audio is None:
            first_audio = k
        complete = max(0, k - stream.lookahead_units)
        assert HOP * durations[:complete].sum() <= emitted <= HOP * durations[:k].sum()
    assert first_audio is not None and first_audio <= stream.lookahead_units + 1
    assert emitted + stream.flush().size == HOP * durations.sum()


def test_flush_reset_and_reuse(vocoder):
    units = [5, 17, 900, 3]
    stream = vocoder.stream()
    first = np.concatenate([stream.push(units), stream.flush()])
    assert stream.flush().size == 0
    with pytest.raises(RuntimeError, match="reset"):
        stream.push([1])
    stream.reset()
    second = np.concatenate([stream.push(units[:2]), stream.push(units[2:]), stream.flush()])
    np.testing.assert_allclose(second, first, atol=TOLERANCE)


def test_empty_stream_gives_empty_audio(vocoder):
    stream = vocoder.stream()
    assert stream.push([]).size == 0 and stream.push([-1]).size == 0
    out = stream.flush()
    assert out.dtype == np.float32 and out.size == 0


def test_bad_units_raise_and_leave_the_stream_usable(vocoder):
    units = np.array([7, 8, 9, 10, 11])
    stream = vocoder.stream()
    pieces = [stream.push(units[:2])]
    with pytest.raises(UnitError, match="codebook"):
        stream.push([12, 1000])
    with pytest.raises(UnitError, match="integers"):
        stream.push([1.5])
    with pytest.raises(UnitError, match="predicts durations"):
        stream.push([3], durations=[2])
    pieces += [stream.push(np.array([-1, 9, -5])), stream.push(units[3:]), stream.flush()]
    np.testing.assert_allclose(np.concatenate(pieces), vocoder.synthesize(units), atol=TOLERANCE)


def test_vocoder_without_duration_predictor(tmp_path):
    vocoder = UnitVocoder.from_pretrained(
        make_fairseq_codehifigan(tmp_path, dur_predictor_params=None), device="cpu"
    )
    units = [1, 2, 3, 4]
    assert vocoder.synthesize(units).shape == (4 * HOP,)
    with pytest.raises(UnitError, match="no duration predictor"):
        vocoder.stream(predict_durations=True)
    stream = vocoder.stream()
    got = np.concatenate([stream.push(units[:1]), stream.push(units[1:]), stream.flush()])
    np.testing.assert_allclose(got, vocoder.synthesize(units), atol=TOLERANCE)


def test_multispeaker_stream(tmp_path):
    folder = make_fairseq_codehifigan(tmp_path, multispkr=True, num_speakers=3)
    vocoder = UnitVocoder.from_pretrained(folder, device="cpu")
    units = np.random.default_rng(3).integers(0, 1000, 12)
    with pytest.raises(UnitError, match="speaker"):
        vocoder.stream()
    got = _stream_all(vocoder.stream(speaker=2), units, 5, np.random.default_rng(0))
    np.testing.assert_allclose(got, vocoder.synthesize(units, speaker=2), atol=TOLERANCE)


def test_streams_share_one_model_across_threads(vocoder):
    sequences = [np.random.default_rng(10 + i).integers(0, 1000, 15) for i in range(3)]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        stream = vocoder.stream()
        pieces = [stream.push(sequences[i][j : j + 2]) for j in range(0, 15, 2)]
        results[i] = np.concatenate(pieces + [stream.flush()])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, units in enumerate(sequences):
        np.testing.assert_allclose(results[i], vocoder.synthesize(units), atol=TOLERANCE)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_stream_equals_offline_on_cuda(tmp_path):
    vocoder = UnitVocoder.from_pretrained(make_fairseq_codehifigan(tmp_path), device="cuda")
    units = np.random.default_rng(4).integers(0, 1000, 60)
    expected = vocoder.synthesize(units)
    for chunking in (1, 7, 25):
        got = _stream_all(vocoder.stream(), units, chunking, np.random.default_rng(0))
        assert got.shape == expected.shape and np.abs(got - expected).max() <= TOLERANCE


def _lockstep_streams(vocoder, unit_lists, chunk, durations=None):
    """Each list streamed by its own thread, ``chunk`` units per push, every round's pushes
    held until all are queued and then run as one batch; returns (audio per list, batches)."""
    from speechgpt_agent.vocoder_batch import batcher_for

    batcher = batcher_for(vocoder.model)
    before = batcher.batches
    rounds = max(-(-len(u) // chunk) for u in unit_lists)
    streams = [vocoder.stream(predict_durations=durations is None) for _ in unit_lists]
    outs = [[] for _ in unit_lists]
    gate = threading.Barrier(len(unit_lists) + 1, timeout=120)  # a failing producer breaks it
    errors = []

    def produce(k):
        try:
            _produce(k)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            errors.append(exc)
            gate.abort()

    def _produce(k):
        units = unit_lists[k]
        for r in range(rounds):
            gate.wait()
            part = slice(r * chunk, (r + 1) * chunk)
            if durations is None:
                outs[k].append(streams[k].push(units[part]))
            else:
                outs[k].append(streams[k].push(units[part], durations[k][part]))
            gate.wait()
        outs[k].append(streams[k].flush())

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(len(unit_lists))]
    for t in threads:
        t.start()
    try:
        _orchestrate(batcher, gate, rounds, len(unit_lists))
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(timeout=60)
        raise errors[0] if errors else AssertionError("a producer hung") from None
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return [np.concatenate(o) for o in outs], batcher.batches - before


def _orchestrate(batcher, gate, rounds, producers):
    for _ in range(rounds):
        with batcher._cond:
            batcher._busy = True  # hold the generator until this round's pushes have queued
        gate.wait()
        for _ in range(5000):  # every producer is queued, or done with its push (at the gate)
            time.sleep(0.001)
            with batcher._cond:
                if len(batcher._queue) + gate.n_waiting == producers:
                    break
        with batcher._cond:
            batcher._busy = False
            batcher._cond.notify_all()
        gate.wait()


def test_concurrent_streams_batched_together_equal_offline(vocoder):
    """Streams of different lengths and phases, stepped as one batch, each equal offline synthesis."""
    rng = np.random.default_rng(7)
    unit_lists = [rng.integers(0, 1000, n) for n in (60, 23, 41, 9, 75)]
    got, batches = _lockstep_streams(vocoder, unit_lists, chunk=7)
    assert batches >= 3  # the rounds did run batched (several streams per generator run)
    for units, audio in zip(unit_lists, got):
        expected = vocoder.synthesize(units)
        assert audio.shape == expected.shape and np.abs(audio - expected).max() <= TOLERANCE


def test_concurrent_streams_with_given_durations_batched(vocoder):
    rng = np.random.default_rng(8)
    unit_lists = [rng.integers(0, 1000, n) for n in (30, 44, 12)]
    durations = [rng.integers(0, 4, len(u)) for u in unit_lists]
    got, batches = _lockstep_streams(vocoder, unit_lists, chunk=5, durations=durations)
    assert batches >= 2
    for units, dur, audio in zip(unit_lists, durations, got):
        expected = vocoder.synthesize(units, dur)
        assert audio.shape == expected.shape and np.abs(audio - expected).max() <= TOLERANCE


def test_free_running_threads_share_the_generator(vocoder):
    """Without any orchestration, many producers at once still get exactly their own audio."""
    rng = np.random.default_rng(9)
    unit_lists = [rng.integers(0, 1000, int(rng.integers(5, 60))) for _ in range(8)]
    results = [None] * len(unit_lists)

    def produce(k):
        stream = vocoder.stream()
        parts = [stream.push(unit_lists[k][i : i + 3]) for i in range(0, len(unit_lists[k]), 3)]
        results[k] = np.concatenate(parts + [stream.flush()])

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(len(unit_lists))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for units, audio in zip(unit_lists, results):
        expected = vocoder.synthesize(units)
        assert audio is not None and audio.shape == expected.shape
        assert np.abs(audio - expected).max() <= TOLERANCE


def test_batched_generator_steps_equal_lone_steps(vocoder):
    """Fresh and steady streams, different lengths each round, one joining late, one leaving early."""
    from speechgpt_agent.testing.vocoder import batched_against_lone_steps

    first = vocoder.stream()._first_frames
    plan = [[first, 5, 1, 9, 3], [first + 7, 2, 30, 0, 4], [0, first, 6, 2, 2], [first + 1, 8]]
    worst, batches = batched_against_lone_steps(vocoder, plan)
    assert batches >= 4 and worst <= TOLERANCE


@pytest.mark.parametrize("given_durations", [False, True])
def test_flush_with_the_last_units_equals_push_then_flush(vocoder, given_durations):
    rng = np.random.default_rng(11)
    units = rng.integers(0, 1000, 37)
    durations = rng.integers(0, 4, 37) if given_durations else None
    expected = vocoder.synthesize(units, durations)
    for split in (0, 5, 30, 37):
        stream = vocoder.stream(predict_durations=not given_durations)
        head = stream.push(units[:split], None if durations is None else durations[:split])
        tail = stream.flush(units[split:], None if durations is None else durations[split:])
        got = np.concatenate([head, tail])
        assert got.shape == expected.shape and np.abs(got - expected).max() <= TOLERANCE, split
    with pytest.raises(RuntimeError, match="reset"):
        stream.flush([3])
    assert stream.flush().size == 0
