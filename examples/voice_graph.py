"""A LangGraph graph: a SpeechGPTChat node and a ToolNode, looping until the answer.

    model --(tool calls?)--> tools --> model --> END

The question can be a recording; the final answer is spoken. Streams the model's text as
it is generated (``stream_mode="messages"``).

    python examples/voice_graph.py --audio question.wav --out answer.wav --model /models/...

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
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


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

    graph = build_graph(chat_from_args(args), [add])
    inputs = {"messages": [question(args.text, args.audio)]}
    for chunk, meta in graph.stream(inputs, stream_mode="messages"):
        if isinstance(chunk, AIMessageChunk) and chunk.text:
            print(chunk.text, end="", flush=True)
    print()
    final = graph.invoke(inputs)["messages"][-1]
    save_spoken_answer(final, args.out)


if __name__ == "__main__":
    main()
