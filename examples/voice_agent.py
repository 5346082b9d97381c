"""A LangChain agent (``langchain.agents.create_agent``) that hears, uses a tool and speaks.

SpeechGPTChat is the agent's model: the question can be a recording, the agent may call
``get_weather``, and the final answer comes back as text and speech.

    python examples/voice_agent.py --audio question.wav --out answer.wav \
        --model /models/SpeechGPT-7B-cm --adapter /models/SpeechGPT-7B-com \
        --speech-tokenizer /models/mhubert-base --vocoder /models/unit_hifigan

Runs offline when every model option names a local folder.
"""

from __future__ import annotations

from _common import (
    add_question_args,
    chat_from_args,
    model_set_parser,
    question,
    save_spoken_answer,
)
from langchain.agents import create_agent
from langchain_core.tools import tool


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location."""
    return f"It is sunny and 22 degrees in {location}."


def main(argv: list[str] | None = None) -> None:
    parser = model_set_parser(__doc__.splitlines()[0])
    add_question_args(parser)
    args = parser.parse_args(argv)

    agent = create_agent(chat_from_args(args), tools=[get_weather],
                         system_prompt="You are a helpful voice assistant.")
    result = agent.invoke({"messages": [question(args.text, args.audio)]})
    for message in result["messages"]:
        calls = getattr(message, "tool_calls", None)
        print(f"{message.type:>5}: {message.text!r}" + (f" calls {calls}" if calls else ""))
    final = result["messages"][-1]
    print("heard:", final.response_metadata.get("transcript", ""))
    save_spoken_answer(final, args.out)


if __name__ == "__main__":
    main()
