"""Streaming unit vocoder: audio for units as they arrive, equal to offline synthesis.

A language model emits speech units one by one; :class:`StreamingVocoder` turns them into
audio chunks without waiting for the end and without recomputing anything: every layer
of :class:`~speechgpt_agent.vocoder.CodeHiFiGAN` is wrapped in a *streaming layer* that
keeps the left context it needs between calls and emits exactly the outputs whose input
window has fully arrived.

* 'same'-padded convolution (kernel k, dilation d, padding p): starts with p zeros of
  left padding, keeps the last ``(k - 1) * d`` inputs, runs an unpadded convolution over
  cache + new input; the end of the stream appends p zeros.
* the residual blocks' ``x + conv2(lrelu(conv1(lrelu(x))))``: each ``lrelu -> conv`` is one
  call of :func:`speechgpt_agent.kernels.lrelu_conv1d`, given the layer's cache of
  *pre-activation* inputs as its left context; the second call also adds the (delayed)
  skip input. On CUDA that is the fused Triton kernel, which reads cache and input where
  they lie; elsewhere its PyTorch reference (``SPEECHGPT_KERNELS`` overrides the choice).
* transposed convolution (kernel K, stride u, padding p): overlap-add. Each new input
  frame adds K outputs; positions no future frame reaches (all but the last K - u) are
  emitted; the first p and last p positions are cropped, as the offline padding does.
* pointwise layers (leaky ReLU, ReLU, LayerNorm over channels, Linear, tanh) need no state.
* the residual blocks' skip inputs wait for their (delayed) branch, and the mean over
  parallel residual blocks buffers whichever block is ahead and emits the aligned prefix.

The duration predictor streams the same way over units; a unit's embedding is repeated
into frames once its duration is known, and the frames stream through the generator.
The concatenated output of all :meth:`~StreamingVocoder.push` calls and
:meth:`~StreamingVocoder.flush` equals :meth:`UnitVocoder.synthesize` up to float
rounding (<= 1e-4), for any chunking.

Latency is the receptive field's right half, computed from the layers
(:attr:`StreamingVocoder.lookahead_frames`, :attr:`StreamingVocoder.lookahead_units`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import UnitError
from .kernels import lrelu_conv1d, unit_embedding
from .vocoder_batch import batcher_for
from .vocoder_modules import (
    LRELU_SLOPE,
    CodeHiFiGAN,
    ResBlock,
    UnitsLike,
    _as_unit_ids,
    durations_from_log,
)

# --------------------------------------------------------------------------- streaming layers


def _padded_length(n: int, device: torch.device) -> int:
    """``n`` rounded up, on CPUs, to a step of 1/16 to 1/8 of itself (at least 8).

    On CPUs PyTorch's oneDNN convolutions build (JIT-compile) a primitive for every new
    input shape, which costs about as much as the convolution itself, and a stream's
    chunks all differ in length. Rounding lengths up (and discarding the extra outputs)
    lets chunks reuse a few cached shapes for ~5 % more arithmetic. Other devices keep ``n``.
    """
    if device.type != "cpu":
        return n
    step = max(8, 1 << max(0, n.bit_length() - 4))
    return -(-n // step) * step


class _StreamLayer:
    """A layer run chunk by chunk on [B, C, T] tensors (time last).

    ``step(x, final)`` takes the next input samples and returns every output sample that
    is now fully determined; ``final=True`` marks the end of the input and returns the
    rest. ``last_input_needed(t)`` is the index of the last input sample that output
    sample ``t`` depends on (receptive-field arithmetic for the latency).
    """

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the stream (back to the state before the first ``step``)."""

    def last_input_needed(self, t: int) -> int:
        return t


class _Pointwise(_StreamLayer):
    """A function applied to each time step on its own (activations, LayerNorm, Linear)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        return self.fn(x)


class _StreamConv1d(_StreamLayer):
    """A stride-1 ``nn.Conv1d`` with symmetric zero padding, run on a left-context cache."""

    def __init__(self, conv: nn.Conv1d) -> None:
        if conv.stride[0] != 1 or conv.groups != 1 or not isinstance(conv.padding[0], int):
            raise ValueError(
                "streaming supports stride-1, ungrouped convolutions with integer padding"
            )
        self.conv = conv
        self.pad = conv.padding[0]
        # inputs a window spans besides its last one
        self.context = (conv.kernel_size[0] - 1) * conv.dilation[0]
        self.reset()

    def reset(self) -> None:
        self.cache: torch.Tensor | None = None  # [B, C_in, <= context] inputs not yet consumed

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        batch, channels, new = x.shape
        if self.cache is None:
            self.cache = x.new_zeros(batch, channels, self.pad)  # the left padding
        cached = self.cache.shape[2]
        filled = cached + new  # real inputs in the buffer; zeros follow (right padding, rounding)
        # outputs whose whole window has arrived
        ready = filled + (self.pad if final else 0) - self.context
        if ready <= 0:
            self.cache = torch.cat([self.cache, x], dim=2)
            return x.new_zeros(batch, self.conv.out_channels, 0)
        buffer = x.new_empty(batch, channels, _padded_length(ready, x.device) + self.context)
        buffer[:, :, :cached] = self.cache
        buffer[:, :, cached:filled] = x
        if buffer.shape[2] > filled:  # right padding at the end, or rounding
            buffer[:, :, filled:].zero_()
        self.cache = buffer[:, :, ready : max(filled, ready)]  # the inputs later outputs still need
        conv = self.conv
        return F.conv1d(buffer, conv.weight, conv.bias, dilation=conv.dilation)[:, :, :ready]

    def last_input_needed(self, t: int) -> int:
        return t + self.context - self.pad


class _StreamConvTranspose1d(_StreamLayer):
    """``nn.ConvTranspose1d`` (stride u, kernel K >= u, padding p) by overlap-add."""

    def __init__(self, conv: nn.ConvTranspose1d) -> None:
        if conv.groups != 1 or conv.dilation[0] != 1 or conv.output_padding[0] != 0:
            raise ValueError("streaming supports ungrouped, undilated transposed convolutions")
        self.conv = conv
        self.stride = conv.stride[0]
        self.kernel = conv.kernel_size[0]
        self.pad = conv.padding[0]
        self.reset()

    def reset(self) -> None:
        self.tail: torch.Tensor | None = None  # [B, C_out, K - u] partial sums of the latest frames
        self.to_crop = self.pad  # leading outputs still to drop (the offline left padding)

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        conv, u = self.conv, self.stride
        pieces = []
        if x.shape[2]:
            # full (uncropped) outputs of the new frames: [B, C_out, (m - 1) * u + K]
            frames = x.shape[2]
            rounded = _padded_length(frames, x.device)
            if rounded > frames:  # zero frames add nothing to the kept outputs
                x = F.pad(x, (0, rounded - frames))
            y = F.conv_transpose1d(x, conv.weight, None, stride=u)[
                :, :, : (frames - 1) * u + self.kernel
            ]
            if self.tail is not None:
                y[:, :, : self.tail.shape[2]] += self.tail
            done = frames * u  # no later frame reaches these positions
            pieces.append(y[:, :, :done])
            self.tail = y[:, :, done:]
        if final and self.tail is not None:
            # the offline output ends p positions before the last frame's reach
            pieces.append(self.tail[:, :, : self.tail.shape[2] - self.pad])
            self.tail = None
        if not pieces:
            return x.new_zeros(x.shape[0], conv.out_channels, 0)
        out = torch.cat(pieces, dim=2) if len(pieces) > 1 else pieces[0]
        if self.to_crop:
            cropped = min(self.to_crop, out.shape[2])
            out = out[:, :, cropped:]
            self.to_crop -= cropped
        return out + conv.bias[:, None] if conv.bias is not None else out

    def last_input_needed(self, t: int) -> int:
        return (t + self.pad) // self.stride


class _Sequential(_StreamLayer):
    def __init__(self, layers: Sequence[_StreamLayer]) -> None:
        self.layers = list(layers)

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step(x, final)
        return x

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def last_input_needed(self, t: int) -> int:
        for layer in reversed(self.layers):
            t = layer.last_input_needed(t)
        return t


class _StreamLReLUConv1d(_StreamConv1d):
    """``conv(leaky_relu(x)) + bias (+ skip)`` of a residual block: a 'same'-padded stride-1
    ``nn.Conv1d`` streamed like :class:`_StreamConv1d`, one
    :func:`~speechgpt_agent.kernels.lrelu_conv1d` per step.

    The cache holds the last ``(k - 1) * d`` *pre-activation* inputs (at first the p zeros
    of left padding: ``leaky_relu(0) = 0``) and is the kernel's left context. Lengths are
    rounded up (:func:`_padded_length`) with zeros *in front of* the cache, whose outputs
    are dropped: that pads the small cache rather than copying the input.
    """

    def __init__(self, conv: nn.Conv1d, slope: float) -> None:
        super().__init__(conv)
        self.slope = slope

    def step(
        self,
        x: torch.Tensor,
        final: bool,
        skip: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """As :meth:`_StreamLayer.step`, plus the skip of a residual block: ``skip`` is two
        [B, C_out, *] pieces whose concatenation starts with the inputs aligned with this
        step's first output; as many of them as there are outputs are added to the outputs."""
        batch, channels, new = x.shape
        cache = x.new_zeros(batch, channels, self.pad) if self.cache is None else self.cache
        cached = cache.shape[2]
        ready = cached + new + (self.pad if final else 0) - self.context  # outputs now determined
        if ready <= 0:
            self.cache = torch.cat([cache, x], dim=2)
            return x.new_zeros(batch, self.conv.out_channels, 0)
        slack = _padded_length(ready, x.device) - ready  # outputs computed in front, dropped
        context = F.pad(cache, (slack, 0)) if slack else cache
        inputs = F.pad(x, (0, self.pad)) if final and self.pad else x  # the right padding
        residual = None
        if skip is not None:  # [B, C_out, slack + ready]: zeros, then the skip inputs
            pending, fresh = skip
            taken = min(pending.shape[2], ready)
            pieces = [pending[:, :, :taken], fresh[:, :, : ready - taken]]
            if slack:
                pieces.insert(0, x.new_zeros(batch, pending.shape[1], slack))
            residual = torch.cat(pieces, dim=2)
        conv = self.conv
        y = lrelu_conv1d(
            inputs, conv.weight, conv.bias, conv.dilation[0],
            slope=self.slope, residual=residual, left_context=context,
        )
        # the inputs later outputs still need: the last `keep` of cache ++ x
        keep = max(0, cached + new - ready)
        if keep <= new:
            self.cache = x[:, :, new - keep :]
        else:
            self.cache = torch.cat([cache[:, :, cached + new - keep :], x], dim=2)
        return y[:, :, slack:] if slack else y


class _StreamResidualLayer(_StreamLayer):
    """``x + conv2(lrelu(conv1(lrelu(x))))``, one dilation of a HiFi-GAN residual block.

    Two :class:`_StreamLReLUConv1d`; the second adds the skip input, which waits in
    ``pending`` until the (delayed) branch output aligned with it is computed.
    """

    def __init__(self, conv1: nn.Conv1d, conv2: nn.Conv1d, slope: float) -> None:
        self.conv1 = _StreamLReLUConv1d(conv1, slope)
        self.conv2 = _StreamLReLUConv1d(conv2, slope)
        self.reset()

    def reset(self) -> None:
        self.conv1.reset()
        self.conv2.reset()
        self.pending: torch.Tensor | None = None  # inputs whose branch output has not arrived

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        pending = x[:, :, :0] if self.pending is None else self.pending
        out = self.conv2.step(self.conv1.step(x, final), final, skip=(pending, x))
        n, waiting = out.shape[2], pending.shape[2]
        if n <= waiting:
            self.pending = torch.cat([pending[:, :, n:], x], dim=2)
        else:
            self.pending = x[:, :, n - waiting :]
        return out

    def last_input_needed(self, t: int) -> int:
        return max(t, self.conv1.last_input_needed(self.conv2.last_input_needed(t)))


class _Mean(_StreamLayer):
    """Mean of parallel branches on one input, summed in order as the offline model does."""

    def __init__(self, branches: Sequence[_StreamLayer]) -> None:
        self.branches = list(branches)
        self.reset()

    def reset(self) -> None:
        for branch in self.branches:
            branch.reset()
        self.queues: list[torch.Tensor | None] = [None] * len(self.branches)

    def step(self, x: torch.Tensor, final: bool) -> torch.Tensor:
        outputs = [branch.step(x, final) for branch in self.branches]
        lefts = [
            x.new_zeros(x.shape[0], y.shape[1], 0) if q is None else q
            for q, y in zip(self.queues, outputs)
        ]
        n = min(left.shape[2] + y.shape[2] for left, y in zip(lefts, outputs))  # aligned prefix
        total = torch.cat([lefts[0], outputs[0]], dim=2)[:, :, :n]
        for left, y in zip(lefts[1:], outputs[1:]):  # same order as offline: ((b0 + b1) + b2) / 3
            m = min(left.shape[2], n)
            total[:, :, :m] += left[:, :, :m]
            total[:, :, m:] += y[:, :, : n - m]
        self.queues = [
            torch.cat([left[:, :, n:], y], dim=2)
            if left.shape[2] > n
            else y[:, :, n - left.shape[2] :]
            for left, y in zip(lefts, outputs)
        ]
        return total.div_(len(self.branches))

    def last_input_needed(self, t: int) -> int:
        return max(branch.last_input_needed(t) for branch in self.branches)


def _leaky_relu(slope: float) -> _Pointwise:
    return _Pointwise(lambda x: F.leaky_relu(x, slope))


def _channel_layer(module: nn.Module) -> _Pointwise:
    """A per-time-step module on channels-last input (LayerNorm, Linear) applied to [B, C, T]."""
    return _Pointwise(lambda x: module(x.transpose(1, 2)).transpose(1, 2))


def _stream_resblock(block: ResBlock) -> _StreamLayer:
    return _Sequential(
        [
            _StreamResidualLayer(c1, c2, LRELU_SLOPE)
            for c1, c2 in zip(block.convs1, block.convs2)
        ]
    )


def _stream_generator(model: CodeHiFiGAN) -> _StreamLayer:
    """Frames [B, model_in_dim, T] -> waveform [B, 1, T * hop], streamed (mirrors ``generate``)."""
    layers: list[_StreamLayer] = [_StreamConv1d(model.conv_pre)]
    for stage, upsample in enumerate(model.ups):
        layers += [
            _leaky_relu(LRELU_SLOPE),
            _StreamConvTranspose1d(upsample),
            _Mean([_stream_resblock(block) for block in model.stage_resblocks(stage)]),
        ]
    # the last activation uses F.leaky_relu's default slope 0.01, as ``generate`` (and fairseq) does
    layers += [_leaky_relu(0.01), _StreamConv1d(model.conv_post), _Pointwise(torch.tanh)]
    return _Sequential(layers)


def _stream_duration_predictor(model: CodeHiFiGAN) -> _StreamLayer:
    """Unit embeddings [B, C, N] -> log-durations [B, 1, N], streamed."""
    predictor = model.dur_predictor
    assert predictor is not None
    return _Sequential(
        [
            _StreamConv1d(predictor.conv1[0]),
            _Pointwise(F.relu),
            _channel_layer(predictor.ln1),
            _StreamConv1d(predictor.conv2[0]),
            _Pointwise(F.relu),
            _channel_layer(predictor.ln2),
            _channel_layer(predictor.proj),
        ]
    )


# --------------------------------------------------------------------------- public class


class StreamingVocoder:
    """Incremental unit-to-waveform synthesis for one utterance (B = 1).

    Create with :meth:`UnitVocoder.stream`, then call :meth:`push` with units as they
    arrive and :meth:`flush` once at the end; :meth:`reset` starts a new utterance. One
    stream belongs to one producer; many streams may share one model across threads.

    Example::

        stream = vocoder.stream()
        for unit in generated_units:
            play(stream.push([unit]))  # often empty until enough units arrived
        play(stream.flush())
    """

    def __init__(
        self,
        model: CodeHiFiGAN,
        *,
        speaker: Any = None,
        predict_durations: bool | None = None,
    ) -> None:
        self.model = model
        has_predictor = model.dur_predictor is not None
        self.predicts_durations = (
            has_predictor if predict_durations is None else bool(predict_durations)
        )
        if self.predicts_durations and not has_predictor:
            raise UnitError("this vocoder has no duration predictor: use predict_durations=False.")
        with torch.inference_mode():
            self._speaker = model.speaker_features(speaker)  # [1, C, 1] or None
        self._generator = _stream_generator(model)
        self._durations = _stream_duration_predictor(model) if self.predicts_durations else None
        # frames the generator needs before it can emit a whole first frame: until then a run
        # would only fill caches, at the cost of one call per layer (the generator is ~70 layers)
        self._first_frames = self._generator.last_input_needed(self.hop_length - 1) + 1
        self.reset()

    # ------------------------------------------------------------ latency

    @property
    def sample_rate(self) -> int:
        return self.model.config.sampling_rate

    @property
    def hop_length(self) -> int:
        return self.model.hop_length

    @property
    def lookahead_frames(self) -> int:
        """Frames after a frame that must arrive before all of its samples can be emitted.

        The right half of the generator's receptive field, from its layers: conv_pre's 3
        frames plus the residual blocks' reach at each rate, rounded up by the transposed
        convolutions (21 frames = 420 ms for the released vocoder).
        """
        hop = self.hop_length
        return max(self._generator.last_input_needed(t) for t in range(hop))

    @property
    def lookahead_units(self) -> int:
        """Units after a unit that must arrive before all of its samples can be emitted.

        The duration predictor's reach (2 units) plus :attr:`lookahead_frames` counted
        as units of one frame each: an upper bound, reached when the following units last
        one frame (predicted durations are >= 1; units given a duration of 0 add to it).
        """
        unit_reach = self._durations.last_input_needed(0) if self._durations is not None else 0
        return unit_reach + self.lookahead_frames

    # ------------------------------------------------------------ streaming

    def reset(self) -> None:
        """Start a new utterance with the same model and speaker."""
        self._generator.reset()
        if self._durations is not None:
            self._durations.reset()
        self._waiting = torch.zeros(0, dtype=torch.long)  # units whose duration is not known yet
        self._held: list[torch.Tensor] = []  # frames [1, C, n] held back until the first run
        self._held_frames = 0
        self._started = False  # the generator has been asked to run
        self._steady = False  # the generator has run: caches at their steady lengths
        self._finished = False

    def push(self, units: UnitsLike | int, durations: UnitsLike | int | None = None) -> np.ndarray:
        """Add units; return the audio that is now final (float32, possibly empty).

        Args:
            units: the next unit id(s). Ids < 0 are dropped; ids >= num_embeddings raise
                (and leave the stream unchanged).
            durations: frames per unit, only for streams made with
                ``predict_durations=False`` (default one frame each).

        Raises:
            UnitError: bad ids or durations. RuntimeError: the stream was flushed (call reset()).
        """
        if self._finished:
            raise RuntimeError("this stream was flushed; call reset() to start a new utterance.")
        ids, dur = self._checked(units, durations)
        with torch.inference_mode():
            frames = self._frames(ids, dur, final=False)
            return self._audio(frames, final=False)

    def flush(self, units: UnitsLike | int = (), durations: UnitsLike | int | None = None) -> np.ndarray:
        """End the utterance; return the remaining audio (float32, possibly empty).

        ``units`` (and ``durations``), as for :meth:`push`, are the utterance's last units:
        ``flush(last)`` equals ``push(last)`` then ``flush()`` and spares one generator run.
        """
        if self._finished:
            if len(_as_unit_ids(units)):
                raise RuntimeError("this stream was flushed; call reset() to start a new utterance.")
            return np.zeros(0, dtype=np.float32)
        ids, dur = self._checked(units, durations)
        with torch.inference_mode():
            frames = self._frames(ids, dur, final=True)
            audio = self._audio(frames, final=True)
        self._finished = True
        return audio

    def _checked(
        self, units: UnitsLike | int, durations: UnitsLike | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unit ids (those >= 0) and their durations (or ``None``), validated."""
        ids = _as_unit_ids(units)
        self.model.check_units(ids)
        keep = ids >= 0
        if durations is None:
            return ids[keep], None
        if self.predicts_durations:
            raise UnitError(
                "this stream predicts durations; open it with predict_durations=False to pass them."
            )
        dur = _as_unit_ids(durations, what="durations")
        if dur.shape != ids.shape:
            raise UnitError(f"got {ids.numel()} units but {dur.numel()} durations.")
        if dur.numel() and int(dur.min()) < 0:
            raise UnitError("durations must be >= 0 frames.")
        return ids[keep], dur[keep]

    # ------------------------------------------------------------ internals

    def _frames(
        self, ids: torch.Tensor, durations: torch.Tensor | None, final: bool
    ) -> torch.Tensor:
        """Frames [1, model_in_dim, T] of the units whose durations are now known."""
        weight = self.model.dict.weight
        ids = ids.to(weight.device)
        if self._durations is not None:
            embeddings = F.embedding(ids, weight).T.unsqueeze(0)  # [1, C, n]
            # log-durations [k] of the oldest k waiting units, now that their context arrived
            log_durations = self._durations.step(embeddings, final)[0, 0]
            self._waiting = torch.cat([self._waiting.to(weight.device), ids])
            ready = log_durations.numel()
            ids, self._waiting = self._waiting[:ready], self._waiting[ready:]
            durations = durations_from_log(log_durations)
        elif durations is None:
            durations = torch.ones_like(ids)
        frames = unit_embedding(ids[None], durations.to(weight.device)[None], weight)
        if self._speaker is not None:
            frames = torch.cat([frames, self._speaker.expand(-1, -1, frames.shape[2])], dim=1)
        return frames

    def _audio(self, frames: torch.Tensor, final: bool) -> np.ndarray:
        """Run the generator on ``frames``; before its first run, hold frames back until it can
        emit a whole frame of audio (:attr:`lookahead_frames` + 1 frames) or the stream ends.

        Holding back changes only how the frames are chunked, so the audio is the same; it
        spares the early pushes' generator runs, which would emit nothing or a few samples.
        """
        if not self._started:
            if frames.shape[2]:
                self._held.append(frames)
                self._held_frames += frames.shape[2]
            if self._held_frames < self._first_frames and not final:
                return np.zeros(0, dtype=np.float32)
            if not self._held:
                frames = frames[:, :, :0]
            else:
                frames = self._held[0] if len(self._held) == 1 else torch.cat(self._held, dim=2)
            self._held, self._held_frames, self._started = [], 0, True
        if frames.shape[2] == 0 and not final:
            return np.zeros(0, dtype=np.float32)
        if final:  # a stream's end runs alone
            return self._generator.step(frames, final)[0, 0].float().cpu().numpy()
        # batched with the steps other streams of this model ask for meanwhile
        return batcher_for(self.model).run(self, frames)
