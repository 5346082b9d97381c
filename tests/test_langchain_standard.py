"""LangChain's standard chat-model suites (``langchain-tests``) on SpeechGPTChat.

The unit suite runs on the default configuration (nothing is loaded). The integration suite
runs against the tiny random model set with every capability flag set to what the class
really does. A random model cannot decide to call a tool or write a joke as JSON, so the
tests that check such answers steer its decoding (``ForceAnswer``, chosen from the prompt
by :class:`Script`) - the test steers, the library parses what comes out. The suite's
tests that download media are replaced by the same checks on local clips.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from speechgpt_agent.integrations.langchain import SpeechGPTChat
from speechgpt_agent.testing.llm import make_tiny_speechgpt
from speechgpt_agent.testing.steer import ForceAnswer, answer_ids

# The suite has async tests and pytest-asyncio runs in strict mode here: mark the module
# (the mark is harmless on the sync tests, whose warning about it is silenced).
pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio'")]


JOKE = {"setup": "Why do cats sit on laptops?", "punchline": "To keep an eye on the mouse."}
CANNED_ARGS = {
    "magic_function": {"input": 3},
    "magic_function_no_args": {},
    "greeting_generator": {"answer_style": "pirate"},
    "get_weather": {"location": "San Francisco"},
    "my_adder_tool": {"a": 3, "b": 4},
}


def scripted_answer(prompt: str) -> str | None:
    """What a capable model would answer to the suite's prompts that need a decision.

    Tool calls when tools are offered (the demanded tool, else the suite's main one), a
    joke as JSON when JSON is asked for, a short text after tool results; ``None`` (no
    steering) for everything else.
    """
    system = prompt.split("[Human]", 1)[0]
    last = prompt.rsplit("[Human]", 1)[-1]
    if "answers with only a JSON object" in system:
        return json.dumps({"setup": JOKE["setup"]} if "no punchline" in last else JOKE)
    tools = [json.loads(line)["name"] for line in system.splitlines() if line.startswith('{"name"')]
    if not tools:
        return None
    if "returned:" in last or "failed:" in last:
        return "Here is the result."
    demanded = re.search(r'You must call the tool "([^"]+)"', system)
    name = demanded.group(1) if demanded else "magic_function" if "magic_function" in tools else tools[0]
    if name == "unicode_customer":
        customer = "你好啊集团" if "你好" in last else "こんにちは株式会社"
        args: dict[str, Any] = {"customer_name": customer, "description": "company"}
    else:
        args = CANNED_ARGS.get(name, {})
    return json.dumps({"tool": name, "arguments": args}, ensure_ascii=False)


class Script:
    """Logits processor that forces :func:`scripted_answer` of the prompt (if any)."""

    def __init__(self, chat: SpeechGPTChat) -> None:
        self.chat = chat
        self.forced: ForceAnswer | None = None
        self.free = False

    def __call__(self, input_ids, scores):
        if self.forced is None and not self.free:
            lm = self.chat.runtime.model
            answer = scripted_answer(lm.decode(input_ids[0].tolist()))
            if answer is None:
                self.free = True
            else:
                self.forced = ForceAnswer(answer_ids(lm, f"[ta] {answer}<eoa>"), lm.eos_id)
        return scores if self.forced is None else self.forced(input_ids, scores)


class TestSpeechGPTChatUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[SpeechGPTChat]:
        return SpeechGPTChat

    @property
    def chat_model_params(self) -> dict:
        return {"seed": 0}

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True


@pytest.fixture(scope="module")
def other_llm(tmp_path_factory):
    """A second tiny LLM folder (for per-call model overrides)."""
    return make_tiny_speechgpt(tmp_path_factory.mktemp("other_llm"), seed=1)


class TestSpeechGPTChatIntegration(ChatModelIntegrationTests):
    _set: Any = None
    _clip: Any = None
    _other: Any = None

    @pytest.fixture(autouse=True)
    def _local_models(self, tiny_model_set, clips, other_llm, one_thread):
        cls = type(self)
        cls._set, cls._clip, cls._other = tiny_model_set, clips["hello_16k_mono.wav"]["path"], other_llm

    @property
    def chat_model_class(self) -> type[SpeechGPTChat]:
        return SpeechGPTChat

    @property
    def chat_model_params(self) -> dict:
        s = self._set
        return {"model": str(s.model), "adapter": str(s.adapter), "speech_tokenizer": str(s.speech_tokenizer),
                "vocoder": str(s.vocoder), "max_tokens": 80, "seed": 0}

    @pytest.fixture
    def model(self, request: Any) -> SpeechGPTChat:
        """The suite's model, its decoding steered by :class:`Script` where a decision is needed."""
        params = {**self.chat_model_params, **(getattr(request, "param", None) or {})}
        if "unicode" in request.node.name:  # CJK names take ~120 byte-fallback tokens here
            params["max_tokens"] = 160
        chat = SpeechGPTChat(**params)
        return chat.model_copy(update={"logits_processors": [lambda: Script(chat)]})

    # -- capabilities, as they are --

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["audio_input", "audio_output"], "stream": ["audio_input", "audio_output"]}

    @property
    def model_override_value(self) -> str:
        # a per-call model comes with its own parts: the embedded demo has all of them here
        # (a bare LLM folder would bring the released adapter and speech tokenizer, downloaded)
        return "demo"

    def _audio_message(self) -> HumanMessage:
        data = base64.b64encode(self._clip.read_bytes()).decode()
        return HumanMessage([{"type": "audio", "base64": data, "mime_type": "audio/wav"}])

    def _invoke(self, model: SpeechGPTChat, messages: list, stream: bool) -> AIMessage:
        if not stream:
            return model.invoke(messages)
        full = None
        for chunk in model.stream(messages):
            full = chunk if full is None else full + chunk
        return full

    def invoke_with_audio_input(self, *, stream: bool = False) -> AIMessage:
        model = SpeechGPTChat(**self.chat_model_params)
        return self._invoke(model, [self._audio_message()], stream)

    def invoke_with_audio_output(self, *, stream: bool = False) -> AIMessage:
        chat = SpeechGPTChat(**self.chat_model_params)
        lm = chat.runtime.model
        answer = answer_ids(lm, "[ta] Hi.; [ua] <sosp><1><2><3><eosp><eoa>")
        model = chat.model_copy(update={"logits_processors": [lambda: ForceAnswer(answer, lm.eos_id)]})
        msg = self._invoke(model, [HumanMessage("Say hi.")], stream)
        assert msg.usage_metadata["output_token_details"]["audio"] == 3
        return msg

    # -- the suite's test that downloads a wav, and its local equivalent --

    @pytest.mark.xfail(reason="downloads a wav from wikimedia.org (no network here); "
                              "test_audio_inputs_local runs the same checks on a local clip",
                       run=False)
    def test_audio_inputs(self, model: BaseChatModel) -> None:
        super().test_audio_inputs(model)

    def test_audio_inputs_local(self, model: BaseChatModel) -> None:
        data = base64.b64encode(self._clip.read_bytes()).decode()
        for block in ({"type": "audio", "mime_type": "audio/wav", "base64": data},
                      {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}):
            msg = model.invoke([HumanMessage([{"type": "text", "text": "Describe this audio:"}, block])])
            assert isinstance(msg, AIMessage)
            assert msg.usage_metadata["input_token_details"]["audio"] > 0
