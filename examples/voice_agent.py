"""A LangChain agent (``langchain.agents.create_agent``) that hears, uses a tool and speaks.

SpeechGPTChat is the agent's model: the question can be a recording, the agent may call
``get_weather``, and the final answer comes back as text and speech.

    python examples/voice_agent.py                      # the demo model and its bundled question
    python examples/voice_agent.py --audio question.wav --out answer.wav \
        --model /models/SpeechGPT-7B-cm --adapter /models/SpeechGPT-7B-com \
        --speech-tokenizer /models/mhubert-base --vocoder /models/unit_hifigan --trust-pickle

With no model option it runs the full set when that is on this machine, else the demo
model embedded in the package (offline). The demo model calls only the calculator it was
trained on (bound beside get_weather when it runs) and only for typed questions, so its
default question is "what is 1234 times 5678". Runs offline when every model option names a local folder.
"""

from __future__ import annotations

from _common import (
    add_question_args,
    chat_from_args,
    demo_tools,
    model_set_parser,
    on_demo,
    question,
    run,
    save_spoken_answer,
)
from langchain.agents import create_agent
from langchain_core.tools import tool

from speechgpt_agent.demo import DEMO_TOOL_QUESTION


@tool
def get_weather(location: str) -> str:
    """Get the current weather at a location."""
    return f"It is sunny and 22 degrees in {location}."


def main(argv: list[str] | None = None) -> None:
    parser = model_set_parser(__doc__.splitlines()[0])
    add_question_args(parser)
    args = parser.parse_args(argv)

    chat = chat_from_args(args)
    # the demo model calls only its calculator, and only for a text question with no system prompt
    demo = on_demo(args)
    agent = create_agent(chat, tools=[get_weather, *demo_tools(args)],
                         system_prompt=None if demo else "You are a helpful voice assistant.")
    ask = question(args.text, args.audio, default_text=DEMO_TOOL_QUESTION if demo else None)
    result = agent.invoke({"messages": [ask]})
    for message in result["messages"]:
        calls = getattr(message, "tool_calls", None)
        print(f"{message.type:>5}: {message.text!r}" + (f" calls {calls}" if calls else ""))
    final = result["messages"][-1]
    print("heard:", final.response_metadata.get("transcript", ""))
    save_spoken_answer(final, args.out)


if __name__ == "__main__":
    run(main)
