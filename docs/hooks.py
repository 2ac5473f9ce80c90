"""mkdocs hooks for the kradapter site.

- Pages and figures from outside docs/ (benchmarks/*.md and their PNGs, CHANGELOG.md) join the site at build
  time, so nothing is copied into docs/ and every figure has one file in the repository.
- ``<!-- config-fields: dotted.Name -->`` in a page becomes a table of that dataclass's fields, from each field's
  ``metadata["help"]``: the config's own help text is the one source of its documentation.
- ``<!-- cli-options: COMMAND -->`` becomes a table of that ``kradapter`` subcommand's options, from its argparse
  help: the CLI's own help text is the one source of a command's option list.
- MathJax is served from the site itself, never from a CDN: its files come from the PyPI package
  ``django-static-mathjax`` (MathJax 3.2.2, no dependencies; in the ``docs`` extra) and join the site under
  ``javascripts/mathjax/`` at build time, so the math renders offline and nothing is vendored in the repository.
- Every public name on the API pages must have a docstring, and in the core modules every function's docstring
  must name its arguments (``Args:``) and, when its body raises, what it raises (``Raises:``). A missing one is a
  warning, which ``mkdocs build --strict`` turns into a failed build.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import re
import textwrap
import typing
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.kradapter")

ROOT = Path(__file__).resolve().parent.parent
# Files outside docs/ that the site shows: site path -> repository path.
EXTERNAL = {"changelog.md": "CHANGELOG.md"}
EXTERNAL_GLOBS = ["benchmarks/*.md", "benchmarks/*/*.png", "benchmarks/*/*.json"]
# A benchmark page may link to a folder of results (``[bench/](bench/)``): the site gets a listing page for each.
FOLDER_LINK = re.compile(r"\]\(((?!https?:)[\w-]+)/\)")
# Modules whose functions must document their arguments and what they raise.
CORE = {
    "kradapter.ops",
    "kradapter.spectral",
    "kradapter.budget",
    "kradapter.quant",
    "kradapter.dist",
    "kradapter.io",
    "kradapter.methods.kronlora.quantize",
}
FIELDS_MARK = re.compile(r"<!--\s*config-fields:\s*([\w.]+)\s*-->")
OPTIONS_MARK = re.compile(r"<!--\s*cli-options:\s*([\w-]+)\s*-->")
API_REF = re.compile(r"^:::\s*([\w.]+)", re.M)
# MathJax's combined TeX component and what it loads beside itself (fonts, TeX extensions, menu, a11y), relative
# to its es5 folder; MathJax finds them next to the script, so the layout is kept.
MATHJAX_SITE_DIR = "javascripts/mathjax"
MATHJAX_FILES = ["tex-mml-chtml.js", "output/chtml/fonts/woff-v2/*.woff", "input/tex/extensions/*.js", "ui/*.js"]
MATHJAX_FILES += ["a11y/*.js", "adaptors/*.js"]


def mathjax_dir() -> Path:
    """The es5 folder of the MathJax copy that the PyPI package django-static-mathjax installs."""
    import importlib.util

    spec = importlib.util.find_spec("mathjax")
    es5 = Path(spec.submodule_search_locations[0]) / "static" / "mathjax" / "es5" if spec else None
    if es5 is None or not (es5 / "tex-mml-chtml.js").is_file():
        raise RuntimeError(
            "the docs serve MathJax themselves (no CDN): install it with pip install 'kradapter[docs]' "
            "(the PyPI package django-static-mathjax)"
        )
    return es5


def on_files(files, config):
    """Add the external pages and figures to the site's files."""
    paths = dict(EXTERNAL)
    for pattern in EXTERNAL_GLOBS:
        for path in sorted(ROOT.glob(pattern)):
            rel = path.relative_to(ROOT).as_posix()
            paths[rel] = rel
    for dest, src in paths.items():
        files.append(File.generated(config, dest, abs_src_path=str(ROOT / src)))
    es5 = mathjax_dir()
    for path in sorted({p for pattern in MATHJAX_FILES for p in es5.glob(pattern)}):
        rel = path.relative_to(es5).as_posix()
        files.append(File.generated(config, f"{MATHJAX_SITE_DIR}/{rel}", abs_src_path=str(path)))
    licence = es5.parent / "LICENSE"  # Apache-2.0, shipped beside the code it covers
    files.append(File.generated(config, f"{MATHJAX_SITE_DIR}/LICENSE", abs_src_path=str(licence)))
    for folder in sorted({Path(p).parent for p in paths if p.count("/") == 2}):
        listing = [f"# {folder.as_posix()}/", "", "The files of this folder, as the repository holds them:", ""]
        listing += [f"- [{Path(p).name}]({Path(p).name})" for p in sorted(paths) if Path(p).parent == folder]
        files.append(File.generated(config, f"{folder.as_posix()}/index.md", content="\n".join(listing) + "\n"))
    return files


def _type_name(tp) -> str:
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    text = text or str(tp).replace("typing.", "")
    return text


def fields_table(dotted: str) -> str:
    """A markdown table (field, type, default, help) of the dataclass `dotted`'s own fields."""
    module, _, name = dotted.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    hints = typing.get_type_hints(cls)
    rows = ["| field | type | default | what it does |", "|---|---|---|---|"]
    inherited = []
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help")
        if f.name not in cls.__dict__.get("__annotations__", {}):
            inherited.append(f"`{f.name}`")
            continue
        if not help_text:
            log.warning(
                "%s.%s has no metadata['help']: the docs take a config field's documentation from it", dotted, f.name
            )
            help_text = ""
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "required"
        help_text = " ".join(help_text.split()).replace("|", "\\|")
        # The annotation as the source writes it (a string under `from __future__ import annotations`). Its pipes stay
        # unescaped: inside a code span they do not split the table's cells, and an escape would show.
        type_text = f.type if isinstance(f.type, str) else _type_name(hints.get(f.name, f.type))
        rows.append(f"| `{f.name}` | `{type_text}` | `{default}` | {help_text} |")
    text = "\n".join(rows)
    if inherited:
        text += "\n\nInherited from PEFT's `PeftConfig` (documented there): " + ", ".join(inherited) + "."
    return text


def options_table(command: str) -> str:
    """A markdown table (option, default, help) of ``kradapter COMMAND``'s options, from the CLI's parser."""
    import argparse

    from kradapter import cli

    cli._load_commands()
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = subparsers.choices[command]
    rows = ["| option | default | what it does |", "|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        flags = ", ".join(action.option_strings) or action.dest
        if action.metavar is not None:
            flags += f" {action.metavar}"
        elif action.choices is not None:
            flags += " {" + ",".join(map(str, action.choices)) + "}"
        elif action.option_strings and action.nargs != 0:
            flags += f" {action.dest.upper()}"
        if action.required:
            default = "required"
        else:
            default = "" if action.default in (None, False) else f"`{action.default!r}`"
        help_text = " ".join((action.help or "").replace("%(default)s", str(action.default)).split())
        help_text = help_text.replace("|", "\\|")
        rows.append(f"| `{flags}` | {default} | {help_text} |")
    return "\n".join(rows)


def on_page_markdown(markdown, page, config, files):
    """Expand the config-field and CLI-option markers and check the docstrings of the names this page documents."""
    markdown = FIELDS_MARK.sub(lambda m: fields_table(m.group(1)), markdown)
    markdown = OPTIONS_MARK.sub(lambda m: options_table(m.group(1)), markdown)
    if page.file.src_uri.startswith("benchmarks/"):
        markdown = FOLDER_LINK.sub(r"](\1/index.md)", markdown)
    for dotted in API_REF.findall(markdown):
        for problem in docstring_problems(dotted):
            log.warning("%s (on %s)", problem, page.file.src_uri)
    return markdown


def _resolve(dotted: str):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _raises_directly(func) -> bool:
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return False
    body = source.split('"""', 2)[-1] if source.count('"""') >= 2 else source
    return re.search(r"^\s+raise \w", body, re.M) is not None


def _function_problems(name: str, func, core: bool) -> list[str]:
    doc = inspect.getdoc(func) if func.__doc__ else None
    if not doc:
        return [f"{name} has no docstring"]
    if not core:
        return []
    problems = []
    params = [p for p in inspect.signature(func).parameters if p not in ("self", "cls")]
    if params and "Args:" not in doc:
        problems.append(f"{name}({', '.join(params)}): docstring has no 'Args:' section")
    if _raises_directly(func) and "Raises:" not in doc:
        problems.append(f"{name} raises but its docstring has no 'Raises:' section")
    return problems


def _is_public_member(name: str) -> bool:
    return not name.startswith("_")


def docstring_problems(dotted: str) -> list[str]:
    """Public names under `dotted` (a module, class or function) without the docstring they need."""
    obj = _resolve(dotted)
    problems: list[str] = []
    if inspect.ismodule(obj):
        core = obj.__name__ in CORE
        if not obj.__doc__:
            problems.append(f"module {dotted} has no docstring")
        exported = getattr(obj, "__all__", None)
        for n in exported or [n for n in vars(obj) if _is_public_member(n)]:
            member = getattr(obj, n)
            if not exported and getattr(member, "__module__", None) != obj.__name__:
                continue  # imported from elsewhere: documented where it is defined
            if inspect.isclass(member):
                problems += _class_problems(f"{dotted}.{n}", member, core)
            elif inspect.isfunction(member):
                problems += _function_problems(f"{dotted}.{n}", member, core)
    elif inspect.isclass(obj):
        problems += _class_problems(dotted, obj, obj.__module__ in CORE)
    elif callable(obj):
        problems += _function_problems(dotted, obj, obj.__module__ in CORE)
    return problems


def _class_problems(name: str, cls, core: bool) -> list[str]:
    problems = [] if cls.__doc__ else [f"class {name} has no docstring"]
    for attr, value in vars(cls).items():
        if not _is_public_member(attr):
            continue
        func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if isinstance(func, property):
            func = func.fget
        if inspect.isfunction(func):
            problems += _function_problems(f"{name}.{attr}", func, core)
    return problems
