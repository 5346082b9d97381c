"""A calculator tool: exact arithmetic for agents, and the tool the demo model learned to call.

The embedded demo model (:mod:`speechgpt_agent.demo`) only knows sums up to twenty; bound to
this tool it asks for ``{"tool": "calculator", "arguments": {"expression": "4725 * 1609"}}``
(asked "what is 4725 times 1609") and answers from the result. Expressions are parsed, never ``eval``-ed.
"""

from __future__ import annotations

import ast
import operator

from langchain_core.tools import tool

__all__ = ["calculator", "evaluate_expression"]

_OPERATORS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos,
}
_MAX_POWER = 64


def evaluate_expression(expression: str) -> int | float:
    """Evaluate an arithmetic expression of numbers, ``+ - * / // % **`` and parentheses.

    Only those are allowed (the expression is parsed, never ``eval``-ed).

    Raises:
        ValueError: anything else, division by zero, or an exponent above 64.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from exc

    def value(node: ast.AST) -> int | float:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > _MAX_POWER:
                raise ValueError(f"exponent {right} is too large (at most {_MAX_POWER}).")
            try:
                return _OPERATORS[type(node.op)](left, right)
            except ZeroDivisionError as exc:
                raise ValueError("division by zero") from exc
        raise ValueError(f"not an arithmetic expression: {expression!r} (only numbers, "
                         "+ - * / // % ** and parentheses)")

    return value(tree.body)


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression on numbers, such as 1234 * 5678."""
    result = evaluate_expression(expression)
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(result)
