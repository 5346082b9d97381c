"""Packaging: import names, the console script, and the `kernels` name kept off the top level."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys

import pytest

from speechgpt_agent.cli import build_parser, parse_unit_text
from speechgpt_agent.errors import SpeechGPTError


def test_subpackages_import_under_one_name():
    import speechgpt_agent.integrations
    import speechgpt_agent.kernels
    import speechgpt_agent.training  # noqa: F401


def test_kernels_is_not_a_top_level_module():
    # bitsandbytes and transformers probe `import kernels` (the HF kernels hub package)
    spec = importlib.util.find_spec("kernels")
    if spec is not None:
        assert "speechgpt" not in str(spec.origin), f"our kernels/ folder leaks as a top-level module: {spec.origin}"


def test_console_script_help():
    exe = shutil.which("speechgpt-agent", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the speechgpt-agent console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0
    for cmd in ("units", "vocode", "convert"):
        assert cmd in out.stdout


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


@pytest.mark.parametrize(
    "text,expected",
    [("<sosp><661><588><eosp>", [661, 588]), ("<sosp> <1> <2> <eosp>", [1, 2]), ("3 4,5", [3, 4, 5]), ("", [])],
)
def test_parse_unit_text(text, expected):
    assert parse_unit_text(text) == expected


def test_parse_unit_text_rejects_garbage():
    with pytest.raises(SpeechGPTError):
        parse_unit_text("hello world")
