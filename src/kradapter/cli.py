"""The `kradapter` command. Thin: parse arguments, call the library, print. Subcommands register themselves in
COMMANDS as (help, add_arguments, run). ``--plugin FILE_OR_MODULE`` (before the subcommand, repeatable) loads a
user's method specs first (kradapter.specs.registry), so every subcommand sees them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Modules that define subcommands; each registers itself with @command when imported.
COMMAND_MODULES = (
    "kradapter.demo",
    "kradapter.budget_command",
    "kradapter.approx.cli",
    "kradapter.bench.command",
    "kradapter.train.commands",
    "kradapter.merge_command",
    "kradapter.convert_command",
)

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def wrap(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run

    return wrap


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@command("info", "list the PEFT methods kradapter registers and the library versions", _no_arguments)
def run_info(args: argparse.Namespace) -> int:
    import peft
    import torch
    import transformers

    import kradapter
    from kradapter._registry import REGISTERED

    print(
        f"kradapter {kradapter.__version__}  (peft {peft.__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__})"
    )
    print("registered PEFT methods:")
    for name, (config_cls, model_cls) in REGISTERED.items():
        print(f"  {name:<12} {config_cls.__name__:<20} {model_cls.__name__:<20} prefix {model_cls.prefix}")
    from .specs import get_spec, method_names

    print("method specs (budget, approx, train, compare, report):")
    for name in method_names():
        spec = get_spec(name)
        print(f"  {name:<12} {type(spec).__module__ + '.' + type(spec).__name__:<44} {spec.summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    import kradapter

    parser = argparse.ArgumentParser(prog="kradapter", description="Khatri-Rao adapters for PEFT: tools and studies")
    parser.add_argument("--version", action="version", version=f"kradapter {kradapter.__version__}")
    _add_plugin_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(run=run)
    return parser


def _add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE_OR_MODULE",
        help="a Python file or module that registers method specs (kradapter.specs.register_spec); "
        "repeatable; also read from the KRADAPTER_PLUGINS environment variable",
    )


def _load_plugins(argv: list[str] | None) -> None:
    """--plugin is read before the full parser is built: the plugins' methods appear in every --methods help."""
    from .specs import add_plugin, load_plugins

    early = argparse.ArgumentParser(add_help=False)
    _add_plugin_argument(early)
    known, _ = early.parse_known_args(argv)
    for entry in known.plugin:
        add_plugin(entry)
    load_plugins()


def main(argv: list[str] | None = None) -> int:
    try:
        _load_plugins(argv)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        print(f"kradapter: error: {err}", file=sys.stderr)
        return 2
    _load_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, KeyError, ImportError) as err:
        # Library errors are written to name the bad input; show them as one line, not a traceback.
        print(f"kradapter {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # disk full, read-only, a directory where a file goes, ...: one line naming the path
        print(f"kradapter {args.command}: error: {_describe_os_error(err, args)}", file=sys.stderr)
        return 1


def _describe_os_error(err: OSError, args: argparse.Namespace) -> str:
    """The OS's reason and the path it concerns; when the OS names none (a full disk during write()), the
    command's output path, where the write was going."""
    reason = err.strerror or str(err)
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    if not paths:
        out = next((getattr(args, a) for a in ("output_dir", "out", "json") if getattr(args, a, None)), None)
        return f"{reason} (writing under {out})" if out else reason
    return f"{reason}: {' -> '.join(map(str, paths))}"


def _load_commands() -> None:
    """Import the modules that define subcommands (each registers itself with @command)."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)


if __name__ == "__main__":
    sys.exit(main())
