"""A text chatbot given ears and a mouth: the voice tools on any tool-calling chat model.

The chatbot (by default SpeechGPTChat in text-only mode; any LangChain chat model with
``bind_tools`` works, e.g. ``--chat-model ollama:llama3.1`` with langchain-ollama) gets
``speech_to_text`` (faster-whisper), ``text_to_speech`` and ``voice_turn`` (SpeechGPT).
Their audio comes back as ToolMessage artifacts and wav files in --out-dir.

    python examples/text_chatbot_voice_tools.py         # the demo model and its bundled question
    python examples/text_chatbot_voice_tools.py --audio question.wav \
        --whisper-model /models/faster-whisper-small --model /models/SpeechGPT-7B-cm ...

With no model option the chatbot and the voice tools use the full set when it is on this
machine; without it the example stops at once with one line (the three tool schemas do not
fit the demo model's context), unless --chat-model names another chatbot. faster-whisper loads only when the chatbot
calls speech_to_text; offline, --whisper-model must name a local folder.
"""

from __future__ import annotations

from pathlib import Path

from _common import chat_from_args, check_audio, model_set_parser, on_demo, run
from langchain.agents import create_agent
from langchain_core.messages import ToolMessage

from speechgpt_agent.demo import DEMO_QUESTION
from speechgpt_agent.errors import SpeechGPTError
from speechgpt_agent.integrations.langchain import SpeechToTextTool, TextToSpeechTool, VoiceTurnTool


def main(argv: list[str] | None = None) -> None:
    parser = model_set_parser(__doc__.splitlines()[0])
    parser.add_argument("--audio", default=str(DEMO_QUESTION),
                        help="a recording for the chatbot to handle (default: the demo's bundled question)")
    parser.add_argument("--request", default="Transcribe this recording, then read the transcript aloud.")
    parser.add_argument("--chat-model", default=None,
                        help="a text chat model for langchain's init_chat_model (default: SpeechGPT, text only)")
    parser.add_argument("--whisper-model", default="small", help="faster-whisper size, hub id or folder")
    parser.add_argument("--device", default="auto", help="faster-whisper device")
    parser.add_argument("--compute-type", default="default", help="faster-whisper compute type")
    parser.add_argument("--out-dir", default="voice_out", help="folder for the spoken wav files")
    args = parser.parse_args(argv)
    check_audio(args.audio)
    if on_demo(args) and not args.chat_model:
        raise SpeechGPTError(
            "the demo model cannot be this example's chatbot: the three voice tools' schemas do not "
            "fit its 1024-token context. Pass the full set (--model fnlp/SpeechGPT-7B-cm ...; see "
            "examples/README.md) or another chatbot with --chat-model provider:name.")

    speechgpt = chat_from_args(args)
    if args.chat_model:
        from langchain.chat_models import init_chat_model

        chatbot = init_chat_model(args.chat_model)
    else:
        chatbot = chat_from_args(args, modalities=["text"])
    tools = [
        SpeechToTextTool(whisper_model=args.whisper_model, device=args.device, compute_type=args.compute_type),
        TextToSpeechTool(speechgpt=speechgpt, output_dir=args.out_dir),
        VoiceTurnTool(speechgpt=speechgpt, output_dir=args.out_dir),
    ]
    agent = create_agent(chatbot, tools=tools)
    audio = Path(args.audio).resolve()
    result = agent.invoke({"messages": [("user", f"{args.request} The recording: {audio}")]})
    for message in result["messages"]:
        line = f"{message.type:>5}: {message.text!r}"
        if isinstance(message, ToolMessage) and message.artifact:
            line += f" (artifact: {sorted(message.artifact)})"
        print(line)


if __name__ == "__main__":
    run(main)
