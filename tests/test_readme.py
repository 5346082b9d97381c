"""Every command and snippet of README.md and examples/README.md, run the way they are written.

Each fenced ``bash`` line and each ``python`` block runs in a fresh folder laid out like the
repository (``.venv``, ``speechgpt_agent``, ``examples``, ... linked in), offline
(``HF_HUB_OFFLINE=1`` and an empty hub cache), so it sees what a new user without weights
sees. Each one is in one of three lists below, by a piece of its text:

* ``RUNS``: works offline (the demo model, or no model) and exits 0;
* ``FAILS_FAST``: needs what is not here (the 7B weights, the user's own clips): it must stop
  within ``FAST_S`` with one error line (no traceback) that says what is missing, and for
  the model set the ``hf download`` command that fixes it;
* ``NOT_RUN``: installs, the test suite itself, hours of training, servers, GPUs; each with
  its reason.

A README command in none of the lists fails the test, so README and test stay in step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = (ROOT / "README.md", ROOT / "examples" / "README.md")
FAST_S = 30.0
"""A fail-fast command's wall-time bound: imports, argument checks, one hub probe (2 busy cores)."""
RUN_TIMEOUT_S = 600

RUNS = (
    "speechgpt-agent demo",
    "speechgpt-agent selfcheck",
    "cp speechgpt_agent/assets/demo/question.wav question.wav",
    "chat --model demo",
    "transcribe --model demo",
    "speak --model demo",
    "units --model demo",
    "vocode --vocoder demo",
    "examples/voice_agent.py",
    "examples/voice_graph.py",
    'SpeechGPT.from_pretrained("demo")',
    'SpeechTokenizer.from_pretrained("demo")',
    'SpeechGPTChat(model="demo"',
)
FAILS_FAST = {
    # command piece: what its one error line must say
    "speechgpt-agent chat --audio question.wav": "hf download fnlp/SpeechGPT-7B-cm",
    "=speechgpt-agent chat": "hf download fnlp/SpeechGPT-7B-cm",  # "=": the whole command
    "speechgpt-agent transcribe question.wav": "hf download fnlp/SpeechGPT-7B-cm",
    'speechgpt-agent speak "Good morning."': "hf download fnlp/SpeechGPT-7B-cm",
    "speechgpt-agent info": "hf download fnlp/SpeechGPT-7B-cm",
    "units question.wav --trust-pickle": "hf download voidful/mhubert-base",
    'vocode "<sosp><661>': "hf download facebook/unit_hifigan",
    "convert hubert": "does not exist",
    "convert kmeans": "does not exist",
    "convert vocoder": "neither an existing local folder",
    "--engine vllm": "hf download fnlp/SpeechGPT-7B-cm",
    "data units clips/": "clips",
    "data label clips/": "clips",
    "data build ma": "data/units.jsonl",
    "data build cm": "data/units.jsonl",
    "train --stage com": "hf download fnlp/SpeechGPT-7B-cm",
    "text_chatbot_voice_tools.py": "demo model cannot be this example's chatbot",
}
NOT_RUN = {
    "pip install": "installs packages",
    "python3 -m venv": "installs packages",
    ".venv/bin/pytest": "the test suite itself",
    "bash .ci/tests": "the test suite itself (CI runs it)",
    "speechgpt_agent.training.recipes.demo": "the demo recipe trains for about two hours (and --export "
                                             "replaces the shipped model)",
    "benchmarks/": "benchmarks take minutes each and write benchmarks/results",
    "ray start": "starts a Ray cluster node",
    "speechgpt-agent serve": "a server that runs until stopped (tests/test_server.py)",
    "from openai import OpenAI": "a client of the running server (tests/test_server.py)",
    'engine="vllm"': "needs vLLM (tests/test_engines.py in .ci/vllm-env)",
}


def _blocks(path: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced block of a markdown file."""
    return re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


def _bash_lines(body: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", body)
    lines = [re.sub(r"\s+#(\s.*)?$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _cases() -> list[tuple[str, str, str]]:
    """(kind, source, code) for every command and python snippet of the READMEs, in order."""
    cases = []
    for readme in READMES:
        for lang, body in _blocks(readme):
            if lang == "bash":
                cases += [("bash", readme.name, line) for line in _bash_lines(body)]
            elif lang == "python":
                cases.append(("python", readme.name, body))
    seen: set[str] = set()  # a command written in both READMEs runs once
    return [c for c in cases if not (c[2] in seen or seen.add(c[2]))]


def _matches(piece: str, code: str) -> bool:
    return code.strip() == piece[1:] if piece.startswith("=") else piece in code


def _classify(code: str) -> tuple[str, str]:
    for piece, reason in NOT_RUN.items():
        if _matches(piece, code):
            return "not_run", reason
    for piece, expected in FAILS_FAST.items():
        if _matches(piece, code):
            return "fails_fast", expected
    if any(piece in code for piece in RUNS):
        return "runs", ""
    return "unknown", ""


CASES = _cases()


def _case_id(case: tuple[str, str, str]) -> str:
    kind, source, code = case
    first = code.strip().splitlines()[0] if kind == "python" else code
    return f"{source}:{first.strip()[:60]}"


def test_every_readme_command_is_classified():
    assert len(CASES) > 20
    unknown = [code for _, _, code in CASES if _classify(code)[0] == "unknown"]
    assert not unknown, f"README commands this test does not know how to check: {unknown}"


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A folder like a fresh clone's, with an empty hub cache and a question.wav."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("speechgpt_agent", "examples", "benchmarks", "training", "integrations", "kernels", ".ci"):
        (folder / name).symlink_to(ROOT / name)
    (folder / ".venv").symlink_to(Path(sys.prefix))
    shutil.copy(ROOT / "speechgpt_agent" / "assets" / "demo" / "question.wav", folder / "question.wav")
    return folder


def _env(user_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),  # `speechgpt-agent` as installed
        HF_HUB_OFFLINE="1",
        HF_HOME=str(user_dir / "hf-home"),  # an empty cache: no weights anywhere
        OMP_NUM_THREADS="1",
    )
    env.pop("PYTHONPATH", None)
    return env


def _run(kind: str, code: str, user_dir: Path) -> tuple[subprocess.CompletedProcess, float]:
    if kind == "bash":
        cmd = ["bash", "-c", code.replace("python ", f"{sys.executable} ", 1) if code.startswith("python ")
               else code]
        stdin = subprocess.DEVNULL
    else:
        cmd, stdin = [sys.executable, "-"], None
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=user_dir, env=_env(user_dir), capture_output=True, text=True,
                          input=code if kind == "python" else None, stdin=stdin, timeout=RUN_TIMEOUT_S)
    return proc, time.perf_counter() - t0


def _error_lines(stderr: str) -> list[str]:
    """stderr less progress and the lines the CLI prints while working."""
    skip = ("loading ", "note: ", "Loading weights", "Failed to load CPU gemm_4bit")
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(skip)
            and "it/s]" not in line]


def _params(kind_wanted: str) -> list:
    out = []
    for case in CASES:
        kind, reason = _classify(case[2])
        if kind == kind_wanted:
            marks = [pytest.mark.slow] if kind == "runs" else []
            out.append(pytest.param(case, reason, id=_case_id(case), marks=marks))
    return out


@pytest.mark.parametrize(("case", "expected"), _params("fails_fast"))
def test_commands_that_need_weights_fail_fast_with_one_line(case, expected, user_dir):
    kind, _, code = case
    proc, wall = _run(kind, code, user_dir)
    errors = _error_lines(proc.stderr)
    assert proc.returncode != 0, proc.stdout
    assert wall < FAST_S, f"took {wall:.1f} s to fail"
    if kind == "bash":
        assert "Traceback" not in proc.stderr, proc.stderr
        assert len(errors) == 1, errors
    assert expected.lower() in errors[-1].lower(), errors


@pytest.mark.parametrize(("case", "reason"), _params("runs"))
def test_commands_that_run_offline(case, reason, user_dir):
    kind, _, code = case
    if "question.wav" in code and "cp " not in code:
        assert (user_dir / "question.wav").is_file()
    proc, _ = _run(kind, code, user_dir)
    assert proc.returncode == 0, f"{code}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr


def test_not_run_commands_have_reasons():
    not_run = [(code, _classify(code)[1]) for _, _, code in CASES if _classify(code)[0] == "not_run"]
    assert all(reason for _, reason in not_run)
