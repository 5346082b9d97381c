"""The rooms of the runtime import one way (DESIGN.md sections 3 and 10): a lower room never
imports a higher one, not even lazily inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import speechgpt_agent

PKG = Path(speechgpt_agent.__file__).parent

# module -> modules of the package it must never import (directly, at any depth of the file)
RULES = {
    "model": {"engines", "pipeline"},
    "demo": {"pipeline", "demo_run", "integrations", "model", "engines"},
    "vocoder_config": {"vocoder", "vocoder_modules", "vocoder_loading", "vocoder_stream"},
    "vocoder_modules": {"vocoder", "vocoder_loading", "vocoder_stream"},
    "vocoder_loading": {"vocoder", "vocoder_stream"},
    "vocoder_stream": {"vocoder", "vocoder_loading"},
    "engines.base": {"pipeline", "engines.transformers_engine", "engines.vllm_engine"},
    "engines.transformers_engine": {"pipeline"},
    "engines.vllm_engine": {"pipeline"},
    "parse": {"pipeline", "model", "engines"},
    "prompt": {"pipeline", "model", "engines"},
}


def _imports(module: str) -> set[str]:
    """Package-relative names of every module that ``module``'s file imports."""
    path = PKG / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text())
    package = module.rsplit(".", 1)[0] if "." in module else ""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, node.module] if node.module else base)
                names = [f"{target}.{a.name}" if target else a.name for a in node.names]
                found.update([target, *names] if target else names)
            elif node.module and node.module.startswith("speechgpt_agent"):
                found.add(node.module.removeprefix("speechgpt_agent").lstrip("."))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("speechgpt_agent."):
                    found.add(a.name.removeprefix("speechgpt_agent."))
    return found


@pytest.mark.parametrize("module", sorted(RULES))
def test_lower_rooms_do_not_import_higher_ones(module):
    imported = _imports(module)
    bad = {f for f in imported for banned in RULES[module] if f == banned or f.startswith(banned + ".")}
    assert not bad, f"{module} imports {sorted(bad)}"


def test_the_rule_reader_sees_imports():
    # the checker itself must be able to fail: pipeline imports the engines and the model
    assert {"engines", "model"} <= _imports("pipeline")
    assert "vocoder_modules" in _imports("vocoder_stream")
