"""Several streams' vocoder steps run as one batched step.

Concurrent spoken turns each own a :class:`~speechgpt_agent.vocoder_stream.StreamingVocoder`
(its own caches). On their own, N turns make N generator runs of ~70 layer calls each,
most of them on tiny tensors, where the cost is the call, not the arithmetic; one batched
run over N streams makes ~70 calls for all of them. :class:`StreamBatcher` gathers the runs
that callers ask for while another run is in progress (flat combining: whoever finds the
generator idle runs everything queued, so a lone caller waits for nothing) and
:func:`step_many` runs them as one.

How one step serves streams of different lengths: their frames are stacked on the batch
dimension, padded on the right. A streaming layer's output ``t`` depends only on its
cache and inputs up to ``t`` (plus its context), so each row's first ``n_i`` outputs are
that stream's own, whatever padding follows; each layer keeps, per row, the same cache a
lone step would keep (a window at that row's position), and the transposed convolutions
see the padding zeroed (their overlap-add would otherwise carry it into the tail). Streams
batch together only in the same phase (all fresh, or all past their first run), where
their caches have equal lengths; the end of a stream (its ``flush``) runs alone.

The result equals the streams' lone steps up to float rounding (tests/test_vocoder_stream.py).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .kernels import lrelu_conv1d

if TYPE_CHECKING:
    from .vocoder_stream import StreamingVocoder

__all__ = ["StreamBatcher", "batcher_for", "step_many"]

Lengths = list[int]


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The streams' states [1, C, T] as one [B, C, T] (equal T: same phase)."""
    first = tensors[0].shape
    if any(t.shape != first for t in tensors[1:]):
        raise RuntimeError("vocoder streams out of phase were batched together (a bug).")
    return torch.cat(tensors, dim=0) if len(tensors) > 1 else tensors[0]


def _window(a: torch.Tensor, b: torch.Tensor, row: int, start: int, size: int) -> torch.Tensor:
    """Row ``row`` of ``cat([a, b], dim=2)[:, :, start:start + size]`` as [1, C, size],
    without building the concatenation (a view where the window lies in one of them)."""
    cut = a.shape[2]
    if start >= cut:
        return b[row : row + 1, :, start - cut : start - cut + size]
    if start + size <= cut:
        return a[row : row + 1, :, start : start + size]
    return torch.cat([a[row : row + 1, :, start:], b[row : row + 1, :, : start + size - cut]], dim=2)


def _cache_of(layers: list[Any], x: torch.Tensor) -> torch.Tensor:
    if all(layer.cache is None for layer in layers):  # fresh streams: the left padding
        return x.new_zeros(x.shape[0], x.shape[1], layers[0].pad)
    return _stack([layer.cache for layer in layers])


def _conv_plan(layers: list[Any], x: torch.Tensor, lengths: Lengths) -> tuple[torch.Tensor, Lengths, int, int]:
    """A stride-1 convolution's step over B streams: ``(cache [B, C, L], outputs per row,
    outputs of the padded batch, that rounded up for the CPU's shape cache)``."""
    from .vocoder_stream import _padded_length

    cache = _cache_of(layers, x)
    cached, context = cache.shape[2], layers[0].context
    ready = [cached + n - context for n in lengths]
    if min(ready) <= 0:
        raise RuntimeError("a batched vocoder step without output (a bug).")
    out = cached + x.shape[2] - context
    return cache, ready, out, _padded_length(out, x.device)


def _conv_many(layers: list[Any], x: torch.Tensor, lengths: Lengths) -> tuple[torch.Tensor, Lengths]:
    """:class:`~speechgpt_agent.vocoder_stream._StreamConv1d` for B streams (not final)."""
    first = layers[0]
    cache, ready, out, rounded = _conv_plan(layers, x, lengths)
    context = first.context
    buffer = torch.cat([cache, x] + ([x.new_zeros(x.shape[0], x.shape[1], rounded - out)]
                                     if rounded > out else []), dim=2)
    conv = first.conv
    y = F.conv1d(buffer, conv.weight, conv.bias, dilation=conv.dilation)[:, :, : max(ready)]
    for i, layer in enumerate(layers):
        layer.cache = buffer[i : i + 1, :, ready[i] : ready[i] + context]
    return y, ready


def _lrelu_conv_many(
    layers: list[Any], x: torch.Tensor, lengths: Lengths, skip: torch.Tensor | None = None
) -> tuple[torch.Tensor, Lengths]:
    """:class:`~speechgpt_agent.vocoder_stream._StreamLReLUConv1d` for B streams (not final);
    ``skip`` [B, C_out, >= outputs] is added to the outputs (a residual block's input)."""
    first = layers[0]
    cache, ready, out, rounded = _conv_plan(layers, x, lengths)
    context = first.context
    inputs = F.pad(x, (0, rounded - out)) if rounded > out else x
    residual = None
    if skip is not None:
        residual = skip[:, :, :rounded]
        if residual.shape[2] < rounded:
            residual = F.pad(residual, (0, rounded - residual.shape[2]))
    conv = first.conv
    y = lrelu_conv1d(inputs, conv.weight, conv.bias, conv.dilation[0], slope=first.slope,
                     residual=residual, left_context=cache)
    for i, layer in enumerate(layers):
        layer.cache = _window(cache, x, i, ready[i], context)
    return y[:, :, : max(ready)], ready


def _residual_many(layers: list[Any], x: torch.Tensor, lengths: Lengths) -> tuple[torch.Tensor, Lengths]:
    """:class:`~speechgpt_agent.vocoder_stream._StreamResidualLayer` for B streams."""
    if all(layer.pending is None for layer in layers):
        pending = x[:, :, :0]
    else:
        pending = _stack([layer.pending for layer in layers])
    h, h_lengths = _lrelu_conv_many([layer.conv1 for layer in layers], x, lengths)
    skip = torch.cat([pending, x], dim=2) if pending.shape[2] else x
    y, y_lengths = _lrelu_conv_many([layer.conv2 for layer in layers], h, h_lengths, skip=skip)
    waiting = pending.shape[2]
    for i, layer in enumerate(layers):  # the inputs whose branch output has not arrived
        layer.pending = skip[i : i + 1, :, y_lengths[i] : waiting + lengths[i]]
    return y, y_lengths


def _mean_many(layers: list[Any], x: torch.Tensor, lengths: Lengths) -> tuple[torch.Tensor, Lengths]:
    """:class:`~speechgpt_agent.vocoder_stream._Mean` for B streams."""
    outputs = [step_many([layer.branches[b] for layer in layers], x, lengths)
               for b in range(len(layers[0].branches))]
    fulls, queued = [], []
    for b, (y, _) in enumerate(outputs):
        queues = [layer.queues[b] for layer in layers]
        left = y[:, :, :0] if all(q is None for q in queues) else _stack(queues)
        fulls.append(torch.cat([left, y], dim=2) if left.shape[2] else y)
        queued.append(left.shape[2])
    n = [min(queued[b] + outputs[b][1][i] for b in range(len(outputs))) for i in range(len(lengths))]
    width = max(n)
    total = fulls[0][:, :, :width].clone() if fulls[0].shape[2] > width else fulls[0].clone()
    for full in fulls[1:]:  # same order as offline: ((b0 + b1) + b2) / 3
        total += full[:, :, :width]
    for i, layer in enumerate(layers):
        layer.queues = [fulls[b][i : i + 1, :, n[i] : queued[b] + outputs[b][1][i]]
                        for b in range(len(outputs))]
    return total.div_(len(outputs)), n


def _transpose_many(layers: list[Any], x: torch.Tensor, lengths: Lengths) -> tuple[torch.Tensor, Lengths]:
    """:class:`~speechgpt_agent.vocoder_stream._StreamConvTranspose1d` for B streams (not final)."""
    from .vocoder_stream import _padded_length

    first = layers[0]
    conv, u, kernel = first.conv, first.stride, first.kernel
    frames = x.shape[2]
    if min(lengths) < frames:  # padding after a row's frames would spill into its tail
        valid = torch.arange(frames, device=x.device) < torch.tensor(lengths, device=x.device)[:, None]
        x = x * valid[:, None, :]
    rounded = _padded_length(frames, x.device)
    if rounded > frames:
        x = F.pad(x, (0, rounded - frames))
    y = F.conv_transpose1d(x, conv.weight, None, stride=u)[:, :, : (frames - 1) * u + kernel]
    if not all(layer.tail is None for layer in layers):
        tail = _stack([layer.tail for layer in layers])
        y[:, :, : tail.shape[2]] += tail
    done = [n * u for n in lengths]
    for i, layer in enumerate(layers):
        layer.tail = y[i : i + 1, :, done[i] : done[i] + kernel - u]
    crop = first.to_crop
    if any(layer.to_crop != crop for layer in layers) or (crop and min(done) < crop):
        raise RuntimeError("vocoder streams out of phase were batched together (a bug).")
    for layer in layers:
        layer.to_crop = 0
    out = y[:, :, crop : max(done)]
    out = out + conv.bias[:, None] if conv.bias is not None else out.clone()
    return out, [d - crop for d in done]


def step_many(layers: list[Any], x: torch.Tensor, lengths: Lengths) -> tuple[torch.Tensor, Lengths]:
    """One non-final step of ``layers`` (the same layer of B streams of one model).

    Args:
        layers: B streaming layers of the same kind and weights, in the same phase.
        x: [B, C, T] the streams' new inputs, row ``i`` valid up to ``lengths[i]``.
        lengths: inputs per stream (>= 1 each).

    Returns:
        ``(y, out_lengths)``: [B, C_out, T_out], row ``i`` valid up to ``out_lengths[i]``.
    """
    from . import vocoder_stream as vs

    kind = type(layers[0])
    if kind is vs._Sequential:
        for j in range(len(layers[0].layers)):
            x, lengths = step_many([layer.layers[j] for layer in layers], x, lengths)
        return x, lengths
    if kind is vs._Pointwise:
        return layers[0].fn(x), lengths
    if kind is vs._StreamResidualLayer:
        return _residual_many(layers, x, lengths)
    if kind is vs._Mean:
        return _mean_many(layers, x, lengths)
    if kind is vs._StreamConvTranspose1d:
        return _transpose_many(layers, x, lengths)
    if kind is vs._StreamLReLUConv1d:
        return _lrelu_conv_many(layers, x, lengths)
    if kind is vs._StreamConv1d:
        return _conv_many(layers, x, lengths)
    raise TypeError(f"no batched step for {kind.__name__}")


class _Request:
    __slots__ = ("audio", "error", "frames", "stream")

    def __init__(self, stream: StreamingVocoder, frames: torch.Tensor) -> None:
        self.stream = stream
        self.frames = frames
        self.audio: np.ndarray | None = None
        self.error: BaseException | None = None


class StreamBatcher:
    """Runs the generator steps of one model's streams, batching those asked for at once.

    :meth:`run` is called by a stream's producer thread; it returns that stream's audio.
    While a run is in progress, new requests queue; the next caller to find the generator
    idle runs all of them as one batch (per phase; see the module docstring).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
        self.batches = 0
        """batched runs so far (B >= 2), for benchmarks and tests"""

    def run(self, stream: StreamingVocoder, frames: torch.Tensor) -> np.ndarray:
        """``stream``'s generator step on ``frames`` [1, C, n] (n >= 1, not final)."""
        request = _Request(stream, frames)
        with self._cond:
            self._queue.append(request)
            while request.audio is None and request.error is None:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                batch, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if request.error is not None:
            raise request.error
        assert request.audio is not None
        return request.audio

    def _run(self, batch: list[_Request]) -> None:
        groups: dict[bool, list[_Request]] = {}
        for request in batch:
            groups.setdefault(request.stream._steady, []).append(request)
        for group in groups.values():
            try:
                if len(group) == 1:
                    (request,) = group
                    request.audio = request.stream._generator.step(request.frames, False)[0, 0].float().cpu().numpy()
                else:
                    self._run_together(group)
                    self.batches += 1
                for request in group:
                    request.stream._steady = True
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting caller
                for request in group:
                    request.error = exc

    @staticmethod
    def _run_together(group: list[_Request]) -> None:
        lengths = [r.frames.shape[2] for r in group]
        width = max(lengths)
        x = torch.cat([F.pad(r.frames, (0, width - n)) if n < width else r.frames
                       for r, n in zip(group, lengths)], dim=0)
        y, out = step_many([r.stream._generator for r in group], x, lengths)
        audio = y[:, 0].float().cpu().numpy()
        for i, request in enumerate(group):
            request.audio = audio[i, : out[i]]


_BATCHERS: weakref.WeakKeyDictionary[Any, StreamBatcher] = weakref.WeakKeyDictionary()
_BATCHERS_LOCK = threading.Lock()


def batcher_for(model: Any) -> StreamBatcher:
    """The :class:`StreamBatcher` shared by every stream of ``model`` (created on first use)."""
    with _BATCHERS_LOCK:
        batcher = _BATCHERS.get(model)
        if batcher is None:
            batcher = _BATCHERS[model] = StreamBatcher()
        return batcher
