"""Server turn detection: Silero VAD (the ``silero-vad`` package's ONNX model, shipped in its
wheel, run by onnxruntime on the CPU, offline) with the protocol's settings.

One :class:`SileroVAD` (one ONNX session, thread-safe) serves every connection; each
connection has its own :class:`TurnDetector`, which keeps the model's recurrent state and
context. Frames are 512 samples at 16 kHz (32 ms), the model's own frame.

Rules (the protocol's ``server_vad`` settings, Silero's hysteresis):

* speech starts at the first frame whose speech probability is ``>= threshold``;
* it stops once the probability has stayed below ``threshold - 0.15`` (at least 0.01) for
  ``silence_duration_ms``; the stop is reported at the end of that silence (the protocol's
  ``audio_end_ms`` "includes the silence duration");
* ``prefix_padding_ms`` is applied by the session (the committed audio starts that much
  before the detected start; ``audio_start_ms`` includes it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ...audio import SAMPLE_RATE

__all__ = ["FRAME", "SileroVAD", "TurnDetector", "VadEvent", "shared_vad"]

FRAME = 512
"""Samples per VAD frame at 16 kHz (32 ms)."""
_CONTEXT = 64


class VADUnavailableError(RuntimeError):
    """The VAD model could not be loaded (``pip install silero-vad onnxruntime``)."""


class SileroVAD:
    """Silero VAD's ONNX model in one onnxruntime session (``run`` is thread-safe)."""

    def __init__(self, path: str | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise VADUnavailableError("server turn detection needs onnxruntime: pip install "
                                      "'speechgpt-agent[serve]' (or onnxruntime).") from exc
        if path is None:
            try:
                import silero_vad
            except ImportError as exc:
                raise VADUnavailableError("server turn detection needs the silero-vad package: pip "
                                          "install 'speechgpt-agent[serve]' (or silero-vad).") from exc
            path = os.path.join(os.path.dirname(silero_vad.__file__), "data", "silero_vad.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)

    def __call__(self, frame: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Speech probability of one frame.

        Args:
            frame: float32 ``[64 + 512]`` (the previous frame's last 64 samples, then this frame).
            state: float32 ``[2, 1, 128]``, the recurrent state.

        Returns:
            (probability in [0, 1], the new state)
        """
        out, state = self.session.run(None, {"input": frame[None, :], "state": state, "sr": self._sr})
        return float(out[0, 0]), state


_shared: SileroVAD | None = None
_lock = threading.Lock()


def shared_vad() -> SileroVAD:
    """The process's one :class:`SileroVAD` (loaded on first use)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = SileroVAD()
        return _shared


@dataclass(frozen=True)
class VadEvent:
    """``kind`` ``"start"``: speech began at ``sample``; ``"stop"``: the silence that ends it
    was complete at ``sample`` (absolute 16 kHz sample indices since the stream began)."""

    kind: Literal["start", "stop"]
    sample: int


class TurnDetector:
    """Speech start / stop over a 16 kHz stream, pushed in pieces of any length.

    Args:
        model: the shared :class:`SileroVAD`.
        threshold: activation probability (0..1, protocol default 0.5).
        silence_duration_ms: silence that ends a turn (default 500).
    """

    def __init__(self, model: SileroVAD, *, threshold: float = 0.5, silence_duration_ms: int = 500) -> None:
        self.model = model
        self.threshold = float(threshold)
        self.low = max(self.threshold - 0.15, 0.01)
        self.silence = int(silence_duration_ms * SAMPLE_RATE / 1000)
        self.state = np.zeros((2, 1, 128), np.float32)
        self.context = np.zeros(_CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)
        self.position = 0  # samples consumed by the model
        self.speaking = False
        self.quiet_since: int | None = None
        self.last_probability = 0.0

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed samples (float32 16 kHz); the start/stop events they complete, in order."""
        buf = np.concatenate([self.pending, np.asarray(samples, dtype=np.float32)])
        events: list[VadEvent] = []
        n = len(buf) // FRAME
        for i in range(n):
            frame = buf[i * FRAME:(i + 1) * FRAME]
            p, self.state = self.model(np.concatenate([self.context, frame]), self.state)
            self.context = frame[-_CONTEXT:]
            start = self.position
            self.position += FRAME
            self.last_probability = p
            if not self.speaking:
                if p >= self.threshold:
                    self.speaking, self.quiet_since = True, None
                    events.append(VadEvent("start", start))
                continue
            if p >= self.threshold:
                self.quiet_since = None
            elif p < self.low and self.quiet_since is None:
                self.quiet_since = start
            if self.quiet_since is not None and self.position - self.quiet_since >= self.silence:
                self.speaking = False
                events.append(VadEvent("stop", self.quiet_since + self.silence))
                self.quiet_since = None
        self.pending = buf[n * FRAME:]
        return events

    def reset(self) -> None:
        """Forget the current speech (the buffer was cleared); the model's state is kept."""
        self.speaking, self.quiet_since = False, None
