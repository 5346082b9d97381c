"""``GET /v1/realtime``: OpenAI's Realtime protocol (WebSocket) over SpeechGPT.

Voice-agent frameworks (pipecat's ``OpenAIRealtimeLLMService``, LiveKit Agents, the OpenAI
Agents SDK's realtime agents, the ``openai`` client's ``realtime.connect``) speak this
protocol; pointed at ``ws://HOST:PORT/v1`` they run on SpeechGPT with no integration code.

* :mod:`.events`: client events parsed, session settings, server event names (GA and beta);
* :mod:`.session`: one connection's state: settings, input audio buffer, conversation items,
  the running response (barge-in, truncation);
* :mod:`.vad`: server turn detection with Silero VAD (``silero-vad``'s ONNX model);
* :mod:`.audio`: the protocol's formats (pcm16 24 kHz, G.711 mu/A-law) to and from 16 kHz;
* :mod:`.router`: the WebSocket endpoint (key, model, session limit).
"""

from __future__ import annotations

from .router import realtime_router

__all__ = ["realtime_router"]
