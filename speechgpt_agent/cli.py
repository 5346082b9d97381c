"""The ``speechgpt-agent`` command: the parser and the entry point.

Subcommands are thin: each parses its flags, calls the library, prints results. They live in
:mod:`speechgpt_agent.commands` (codec, conversation, maintenance; shared flags in
``commands.options``), training and serving in ``training.cli`` and ``server.cli``. Heavy
imports (torch, transformers) happen inside the subcommand so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .commands.codec import add_convert, add_units, add_vocode, parse_unit_text
from .commands.conversation import add_chat, add_speak, add_transcribe
from .commands.maintenance import add_demo, add_info, add_selfcheck
from .errors import SpeechGPTError

__all__ = ["build_parser", "main", "parse_unit_text"]


def _add_training(sub: argparse._SubParsersAction) -> None:
    from .training.cli import add_data_parser, add_train_parser

    add_train_parser(sub)
    add_data_parser(sub)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from .server.cli import add_serve_parser

    add_serve_parser(sub)


_COMMANDS: Sequence[Callable[[argparse._SubParsersAction], None]] = (
    add_demo, add_chat, add_transcribe, add_speak, add_units, add_vocode, add_convert, add_info, add_selfcheck,
    _add_training, _add_serve,
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``func``, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="speechgpt-agent",
        description="SpeechGPT as a speech plugin for AI agents: speech units, vocoder, chat, training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpeechGPTError as exc:
        print(f"speechgpt-agent {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything else: one line, never a traceback
        import os

        if os.environ.get("SPEECHGPT_AGENT_TRACEBACK"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        print(f"speechgpt-agent {args.command}: error: {type(exc).__name__}: {first} "
              "(SPEECHGPT_AGENT_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
