"""The ``shiftlab`` command line: one module per command, each with its parser builder
(``add_arguments``; its examples go in its help) and its ``run``.

Bad input, from a mistyped option to a hostile file, exits with status 2 and ONE line on
stderr, ``shiftlab COMMAND: error: what is wrong, and what to do``; nothing half-written and
no new empty folder is left behind. Ctrl-C, however early, prints ``interrupted`` and exits
with status 130. Warnings of a successful command are one line each,
``shiftlab COMMAND: warning: ...``; a failed command prints only its error.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ShiftlabError, UsageError, printable
from . import animate, audit, convert, demo, experiment, fetch_mnist, layers, models, report, train
from .running import import_torch, interrupted, no_new_empty_folders, warnings_as_lines

__all__ = ["main", "build_parser", "parse_args", "COMMANDS"]

#: the commands, in the order ``shiftlab --help`` lists them
_MODULES = (audit, models, layers, train, fetch_mnist, experiment, convert, animate, report, demo)
#: command name -> the function that runs it
COMMANDS = {command.NAME: command.run for command in _MODULES}
#: commands that never import torch (they start faster without it)
TORCH_FREE = {command.NAME for command in _MODULES if getattr(command, "TORCH_FREE", False)}


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one-line :class:`UsageError` s naming the
    (sub)command, instead of a usage banner and ``sys.exit(2)``."""

    def error(self, message: str):
        if message == "the following arguments are required: COMMAND":
            message = "no command given; choose one of " + ", ".join(COMMANDS)
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (each command module adds its own options)."""
    from .. import __version__
    parser = _Parser(prog="shiftlab", description="Measure, see and fix shift-equivariance of CNNs.")
    parser.add_argument("--version", action="version", version=f"shiftlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _MODULES:
        p = sub.add_parser(command.NAME, help=command.HELP, description=command.HELP,
                           epilog=command.EXAMPLES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(p)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The parsed command line; a :class:`UsageError` (one line) if it does not parse. An
    unknown option is reported by the subcommand it was given to."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, extra = build_parser().parse_known_args(argv)
    except UsageError as err:                         # `--shifts -4:4` reads -4:4 as an option
        option = err.message.partition(":")[0].removeprefix("argument ").split("/")[-1]
        dashed = [argv[k + 1] for k, a in enumerate(argv[:-1])
                  if a == option and argv[k + 1].startswith("-")]
        if err.message.endswith("expected one argument") and dashed:
            raise UsageError(err.prog, f"{err.message}; write a value that starts with '-' as "
                                       f"{option}={dashed[0]}") from None
        raise
    if extra:
        raise UsageError(f"shiftlab {args.command}", f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status: 0, 2 on bad input, 130 on Ctrl-C. The one
    error path: every failure ends here as one line on stderr."""
    prog = "shiftlab"
    try:
        try:
            args = parse_args(argv)
        except SystemExit as done:                    # --help and --version
            return done.code if isinstance(done.code, int) else 0
        prog = f"shiftlab {args.command}"
        with no_new_empty_folders(args), warnings_as_lines(prog):
            if args.command not in TORCH_FREE:
                import_torch()
            COMMANDS[args.command](args)
    except ShiftlabError as err:
        if not getattr(err, "quiet", False):          # quiet: another rank of torchrun says it
            print(f"{getattr(err, 'prog', prog)}: error: {printable(str(err))}", file=sys.stderr)
        return 2
    except BaseException as err:
        if not interrupted(err):
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 0
