"""The guard of a turn with no tool bound: no text part of the answer opens with a tool call.

Without tools, a model trained on calls (the demo) or prompted with the convention may still
answer with the raw text of one. :func:`no_tool_call_grammar` is an EBNF grammar (xgrammar,
like the other grammars of :mod:`speechgpt_agent.grammar`) built from a small automaton over
characters (:func:`_no_call_step`): the opening of a call (``{"``, ``[{"``, bare or in a code
fence) is refused where a text part begins; everything else (transcript, text, units) is free.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from .grammar import Grammar
from .prompt import SPEECHGPT, TA

__all__ = ["no_tool_call_grammar"]

_WS = " \t\r\n"
_TEXT_ANCHORS = (TA, "[tq]", SPEECHGPT)
"""Markers after which a text part can begin (besides the very start of the answer), as
:mod:`.parse` reads them: ``[ta]``, and ``[tq]`` or a re-emitted speaker tag, which it drops."""


def _no_call_step(states: frozenset[Any], c: str) -> frozenset[Any] | None:
    """The automaton of "a text part opens with a call", one character on; ``None``: it did.

    Its states: ``"S"`` at the start of a text part (skipping spaces, ``;`` and ``:``),
    ``("F", n)`` n backticks of a code fence, ``"FL"`` the fence's language tag, ``"O"``
    spaces before the opening, ``"L"`` after ``[``, ``"B"`` after ``{``, ``("A", k, i)`` i
    characters of anchor k (a new anchor can start at any character). A call opens at
    ``"`` after ``"B"``: a JSON object with a key, alone or in a list, bare or fenced.
    """
    new: set[Any] = set()
    for st in states:
        if st == "S":
            if c in _WS or c in ";:":
                new.add("S")
            elif c == "`":
                new.add(("F", 1))
        if st in ("S", "O", "FL"):
            if c in _WS and st != "S":
                new.add("O")
            elif c == "[":
                new.add("L")
            elif c == "{":
                new.add("B")
            elif st == "FL" and c.isascii() and c.isalpha():
                new.add("FL")
        elif st in ("L", "B"):
            if c in _WS:
                new.add(st)
            elif st == "L" and c == "{":
                new.add("B")
            elif st == "B" and c == '"':
                return None
        elif st[0] == "F":
            if c == "`":
                new.add("FL" if st[1] == 2 else ("F", st[1] + 1))
        else:  # ("A", k, i)
            _, k, i = st
            if c == _TEXT_ANCHORS[k][i]:
                new.add("S" if i + 1 == len(_TEXT_ANCHORS[k]) else ("A", k, i + 1))
    for k, anchor in enumerate(_TEXT_ANCHORS):
        if c == anchor[0]:
            new.add(("A", k, 1))
    return frozenset(new)


_CLASS_ESCAPES = {"\\": "\\\\", "]": "\\]", "[": "\\[", "^": "\\^", "-": "\\-", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t", '"': '\\"'}


def _char_class(chars: Sequence[str], negate: bool = False) -> str:
    return "[" + "^" * negate + "".join(_CLASS_ESCAPES.get(c, c) for c in chars) + "]"


@functools.lru_cache(maxsize=1)
def _no_call_ebnf() -> str:
    """The automaton of :func:`_no_call_step` made deterministic, written as EBNF.

    One rule per state (22), every state accepting (the answer may end anywhere); the
    state where a call opens is left out, so no token can lead there.
    """
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    alphabet = sorted(set(_WS + ";:`[{\"" + "".join(_TEXT_ANCHORS) + "".join(letters)))
    start: frozenset[Any] = frozenset({"S"})
    ids = {start: 0}
    order = [start]
    rules = []
    for state in order:  # grows while it is read: breadth-first over the reachable states
        targets: dict[int, list[str | None]] = {}
        for c in [*alphabet, None]:  # None: every character outside the alphabet
            nxt = _no_call_step(state, "\0" if c is None else c)
            if nxt is None:
                continue
            if nxt not in ids:
                ids[nxt] = len(order)
                order.append(nxt)
            targets.setdefault(ids[nxt], []).append(c)
        alts = ['""']
        for target, chars in sorted(targets.items()):
            named = [c for c in chars if c is not None]
            cls = _char_class([c for c in alphabet if c not in named], negate=True) if None in chars \
                else _char_class(named)
            alts.append(f"{cls} s{target}")
        rules.append(f"s{ids[state]} ::= " + " | ".join(alts))
    return "root ::= s0\n" + "\n".join(rules) + "\n"


@functools.lru_cache(maxsize=1)
def no_tool_call_grammar() -> Grammar:
    """The grammar of an answer whose text never opens with a tool call (no tool is bound).

    :meth:`SpeechGPT.stream <speechgpt_agent.pipeline.SpeechGPT.stream>` applies it to every
    chat turn that has no grammar of its own, so that without tools bound no model (the demo
    included) answers with the raw text of a call. A text part (the start of the answer, or
    what follows ``[ta]`` - after the transcript of a spoken question -, ``[tq]`` or a
    re-emitted ``[SpeechGPT]:``, spaces, ``;`` and ``:`` skipped) may not open with a JSON
    object that has a key: ``{"``, ``[{"`` or either in a code fence (```` ```json {" ````),
    whitespace allowed between them. That is the opening of every call of the prompt's
    convention (``{"tool": ..., "arguments": ...}`` or a list of them); refusing it at
    ``{"`` rather than at ``{"tool"`` lets the model answer in words instead of finishing
    a call it has begun. Everything else is free: text that holds braces later, ``{}``,
    ``[1, 2]``, the transcript, the speech units.

    The mask changes no token but those, and the tokens that would make the text invalid
    UTF-8 (xgrammar matches characters). The cost is one small matcher step per token
    (``benchmarks/constrained.py``). A JSON answer is asked for with JSON mode
    (``json_answer_grammar``), which replaces this guard.
    """
    return Grammar.from_ebnf(_no_call_ebnf(), description="an answer that opens no tool call")
