"""langchain-tests' integration suite on the embedded demo model, unsteered: which of its
tool-calling and structured-output tests pass, and how the others fail.

The suite in tests/test_langchain_standard.py runs on a random tiny model whose decoding the
tests steer. Here nothing is steered: the demo model decides, and the grammar (issue 18)
constrains what it writes. The demo knows a closed world (arithmetic, a few facts, the
calculator), so a test that needs a joke or a named tool it never saw shows what grammar
alone gives.

    .venv/bin/python benchmarks/langchain_suite_demo.py      # table + benchmarks/results/langchain_suite_demo.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment, print_table, write_json

ROOT = Path(__file__).resolve().parent.parent

SUITE = textwrap.dedent('''
    import pytest
    from langchain_tests.integration_tests import ChatModelIntegrationTests
    from speechgpt_agent.integrations.langchain import SpeechGPTChat

    pytestmark = [pytest.mark.asyncio]


    class TestDemoIntegration(ChatModelIntegrationTests):
        @property
        def chat_model_class(self):
            return SpeechGPTChat

        @property
        def chat_model_params(self):
            return {"model": "demo", "quantization": None, "temperature": 0, "min_new_tokens": 0,
                    "max_tokens": 200}

        @property
        def has_tool_choice(self):
            return True

        @property
        def supports_json_mode(self):
            return True
''')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default="tool or structured or json", help="pytest -k selection")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "langchain_suite_demo.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test_demo_suite.py"
        test.write_text(SUITE)
        report = Path(tmp) / "report.xml"
        cmd = [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider", "-k", args.k,
               "--rootdir", tmp, "-o", "addopts=", "-o", "asyncio_mode=auto", f"--junitxml={report}",
               "--timeout=300"] if _has_timeout() else \
              [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider", "-k", args.k,
               "--rootdir", tmp, "-o", "addopts=", "-o", "asyncio_mode=auto", f"--junitxml={report}"]
        subprocess.run(cmd, cwd=tmp, check=False)
        rows = []
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, why = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    why = (node.get("message") or "").splitlines()[0][:160] if node.get("message") else ""
                    break
            rows.append({"test": case.get("name"), "outcome": outcome, "why": why})
    rows.sort(key=lambda r: (r["outcome"] != "passed", r["test"]))
    print_table(rows, ["test", "outcome", "why"])
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("passed", "failed", "error", "skipped")}
    print(counts)
    path = write_json(args.out, {"benchmark": "langchain_suite_demo", "environment": environment(),
                                 "selection": args.k, "counts": counts, "rows": rows})
    print(f"wrote {path}")
    return 0


def _has_timeout() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest_timeout") is not None


if __name__ == "__main__":
    raise SystemExit(main())
