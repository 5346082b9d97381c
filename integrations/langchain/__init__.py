"""LangChain chat model and voice tools for SpeechGPT.

* :class:`SpeechGPTChat`: SpeechGPT as a ``BaseChatModel`` (audio and text in, text and
  audio out, streamed; tool calling through a JSON convention; structured output).
* :class:`SpeechToTextTool`, :class:`TextToSpeechTool`, :class:`VoiceTurnTool`: ``BaseTool``s
  that give any text chat model ears and a mouth.
* :func:`message_audio`: the spoken answer of a message (or of a summed stream) as samples.
"""

from .calculator import calculator
from .chat_models import SpeechGPTChat
from .messages import message_audio
from .tools import SpeechToTextTool, TextToSpeechTool, VoiceTurnTool

__all__ = [
    "SpeechGPTChat",
    "SpeechToTextTool",
    "TextToSpeechTool",
    "VoiceTurnTool",
    "calculator",
    "message_audio",
]
