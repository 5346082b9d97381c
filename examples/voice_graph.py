"""A LangGraph graph: a SpeechGPTChat node and a ToolNode, looping until the answer.

    model --(tool calls?)--> tools --> model --> END

The question can be a recording; the final answer is spoken. Streams the model's text as
it is generated (``stream_mode="messages"``; the final state comes from the same run).

    python examples/voice_graph.py                      # the demo model and its bundled question
    python examples/voice_graph.py --audio question.wav --out answer.wav --model /models/...

With no model option it runs the full set when that is on this machine, else the demo
model embedded in the package (offline; it calls its calculator, bound beside add, for
its default typed question "what is 1234 times 5678"). Runs offline when every model
option names a local folder.
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
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition

from speechgpt_agent.demo import DEMO_TOOL_QUESTION


@tool
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


def build_graph(chat, tools):
    """The compiled graph: ``model`` answers or calls ``tools``; tool results go back to it."""
    model = chat.bind_tools(tools)

    def call_model(state: MessagesState) -> dict:
        return {"messages": [model.invoke(state["messages"])]}

    graph = StateGraph(MessagesState)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition, {"tools": "tools", END: END})
    graph.add_edge("tools", "model")
    return graph.compile()


def main(argv: list[str] | None = None) -> None:
    parser = model_set_parser(__doc__.splitlines()[0])
    add_question_args(parser)
    args = parser.parse_args(argv)

    graph = build_graph(chat_from_args(args), [add, *demo_tools(args)])
    # the demo model calls only its calculator, and only for a text question
    ask = question(args.text, args.audio, default_text=DEMO_TOOL_QUESTION if on_demo(args) else None)
    inputs = {"messages": [ask]}
    final = None
    for mode, payload in graph.stream(inputs, stream_mode=["messages", "values"]):
        if mode == "messages":  # (message chunk, metadata) as the model generates
            chunk = payload[0]
            if isinstance(chunk, AIMessageChunk) and chunk.text:
                print(chunk.text, end="", flush=True)
        else:  # the graph's state after each step: the last one holds the final answer
            final = payload["messages"][-1]
    print()
    save_spoken_answer(final, args.out)


if __name__ == "__main__":
    run(main)
