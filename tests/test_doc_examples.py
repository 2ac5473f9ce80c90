"""Every code block a reader would paste from README.md and docs/**/*.md runs here, as written, offline.

What happens to a fenced block depends on its language:

- ``python``: run in a fresh process (forked from tests/_doc_runner.py, which has torch, transformers, PEFT,
  datasets and trl imported but never kradapter), in a temporary working directory, with ``HF_HUB_OFFLINE=1`` and
  a timeout. It passes when it exits 0.
- ``bash`` / ``sh`` / ``shell`` / ``console`` (in ``console`` only the ``$ `` lines and their ``\\`` continuations
  are commands; the rest is output): each command (lines joined at ``\\``, split at ``&&`` and ``;``) in order,
  stopping at the first failure. ``kradapter ...`` runs the console script's ``main`` in a forked process as above;
  any other command runs in bash. Some commands are checked, not run:
    - ``pip install ...``: every extra of ``".[extra,...]"`` exists in pyproject's optional-dependencies, a pinned
      project dependency (``torch==2.13.0``) satisfies pyproject's range for it, and any other package it names
      is named in pyproject.toml (as a dependency, or in the comment that says to install it);
    - ``python -m venv DIR``, ``. DIR/bin/activate`` / ``source ...``: nothing to check (the test runs in its own
      environment);
    - ``python -m pytest PATHS`` / ``pytest PATHS``: the paths exist (CI runs the suite itself).
- ``yaml`` / ``json``: parsed (``accelerate-config`` also loads a YAML block with Accelerate's own config loader).
- a fence without a language, or ``text``: an output listing, never run; but a plain fence with ``$ `` lines is a
  failure (a command hidden from this test: tag it ``console``).

Working directory: a fresh temporary directory in which the repository's top-level files and folders are linked,
so a block sees a checkout (``examples/loha_spec.py``, ``pyproject.toml``) but writes nowhere in it.

Markers: an HTML comment on the last non-blank line before the fence (invisible on GitHub and on the site)::

    <!-- doctest: KEYWORD [KEY="VALUE" ...] -->

A block without a marker runs as written. Keywords and keys (unknown ones fail the test, so a typo cannot
silently skip a block):

- ``skip reason="..."``: not run. Only for listings that are not commands (a file tree, a program's output);
  ``reason`` is required.
- ``stand-in=tiny-llama``: the block needs a real model. Every ``path/to/NAME`` in the block is replaced with the
  directory of a tiny Llama built from a config here (random weights, word-level tokenizer, saved with
  ``save_pretrained``), and the same code runs on it.
- ``long`` / ``gpu``: the block takes long or wants a GPU; it must then declare how it is shrunk or moved:
    - ``args="..."``: appended to every ``kradapter`` command of the block (``args.SUBCOMMAND="..."``: only to
      that subcommand's, e.g. ``args.approx="--size 64 48"``);
    - ``sub="OLD=>NEW"``: a literal substitution in the block's text (repeatable: ``sub="A=>B" sub="C=>D"``).
  Every ``sub`` and every stand-in must match the block at least once, so a marker cannot go stale unseen.
- ``parse-only reason="..."``: commands that need several GPUs, several nodes or the reader's own data. Each
  command is parsed by its own argument parser instead of run: ``kradapter`` by the CLI's, ``torchrun`` by
  torch.distributed.run's and ``accelerate launch`` by Accelerate's (and, for ``-m kradapter``, the kradapter
  arguments after them by the CLI's); a path into the repository it names (``examples/...``) must exist.
- ``needs=MODULE,...``: skipped, naming them, where these modules are not installed (the recipes' offline data).
- ``timeout=SECONDS``: this block's limit (default 120 s a command or python block).

The whole file runs in about 3 minutes of CPU on 2 cores: long runs are shrunk by their markers, multi-process
launchers are parse-only, and the runner imports the heavy libraries once.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*doctest:(?P<body>.*?)-->\s*$")
PLACEHOLDER = re.compile(r"path/to/[\w.-]+")
RUN_LANGS = {"python", "bash", "sh", "shell", "console", "yaml", "yml", "json"}
LISTING_LANGS = {"", "text", "txt", "output"}
FLAGS = {"skip", "long", "gpu", "parse-only", "accelerate-config"}
KEYS = {"reason", "stand-in", "args", "sub", "needs", "timeout"}
STAND_INS = {"tiny-llama"}
TIMEOUT = 120.0
REPO_DIRS = ("examples/", "benchmarks/", "tests/", "docs/", "src/", ".ci/")


@dataclass
class Block:
    page: str
    line: int  # the opening fence's line, 1-based
    lang: str
    text: str
    flags: set[str] = field(default_factory=set)
    keys: dict[str, list[str]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}-{self.lang or 'listing'}"

    def key(self, name: str, default: str | None = None) -> str | None:
        values = self.keys.get(name)
        return values[-1] if values else default


def parse_marker(body: str, where: str) -> tuple[set[str], dict[str, list[str]]]:
    flags: set[str] = set()
    keys: dict[str, list[str]] = {}
    for token in shlex.split(body):
        name, eq, value = token.partition("=")
        base = name.split(".", 1)[0]
        if not eq and name in FLAGS:
            flags.add(name)
        elif eq and base in KEYS and (base == name or base == "args"):
            keys.setdefault(name, []).append(value)
        else:
            raise ValueError(
                f"{where}: unknown doctest marker item {token!r} (flags {sorted(FLAGS)}, keys {sorted(KEYS)})"
            )
    return flags, keys


def collect(path: Path) -> list[Block]:
    """The fenced blocks of one markdown page, each with the marker on the last non-blank line before it."""
    page = path.relative_to(ROOT).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m["fence"], i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(fence)), len(lines))
        indent = len(m["indent"])
        body = "\n".join(line[indent:] if line[:indent].isspace() else line for line in lines[start + 1 : end])
        block = Block(page, start + 1, m["lang"].lower(), body + "\n")
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        if mm := MARKER.match(prev):
            block.flags, block.keys = parse_marker(mm["body"], block.id)
        blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = [b for page in PAGES for b in collect(page)]


# --- the runner and the stand-ins ----------------------------------------------------------------------------------


def offline_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT / "src"), env.get("PYTHONPATH", "")] if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Runner:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_doc_runner.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=offline_env(),
        )
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner():
    r = Runner()
    yield r
    r.close()


WORDS = "the cat sat on a mat dog ran far away big small red blue answer question yes no".split()


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, Path]:
    """tiny-llama: a 2-layer Llama (random weights) with a word-level tokenizer, saved as a model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("stand-ins") / "tiny-llama"
    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>", model_max_length=64
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"tiny-llama": out}


def checkout_dir(tmp_path: Path) -> Path:
    """A working directory that looks like a checkout (top-level entries linked) and writes nowhere in it."""
    work = tmp_path / "work"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {".git", "runs", "site"} and not entry.name.startswith(".venv"):
            (work / entry.name).symlink_to(entry)
    return work


def prepared_text(block: Block, stand_ins: dict[str, Path]) -> str:
    """The block's text after its marker's substitutions and stand-in paths."""
    text = block.text
    for sub in block.keys.get("sub", []):
        old, sep, new = sub.partition("=>")
        assert sep, f"{block.id}: sub={sub!r} is not OLD=>NEW"
        assert old in text, f"{block.id}: sub's {old!r} is not in the block (a stale marker)"
        text = text.replace(old, new)
    if name := block.key("stand-in"):
        assert name in STAND_INS, f"{block.id}: unknown stand-in {name!r} (known: {sorted(STAND_INS)})"
        assert PLACEHOLDER.search(text), f"{block.id}: stand-in={name} but no path/to/NAME in the block"
        text = PLACEHOLDER.sub(str(stand_ins[name]), text)
    return text


# --- bash: split into commands, check or run each ------------------------------------------------------------------

SHELL_SYNTAX = {"|", ">", ">>", "<", "2>&1", "&", "||"}


def shell_commands(text: str, console: bool) -> list[list[str]]:
    """The block's commands as token lists: continuations joined, comments dropped, split at && and ;."""
    logical, current, in_command = [], "", not console
    for raw in text.splitlines():
        line = raw
        if console and not current:
            in_command = line.startswith("$ ")
            line = line[2:] if in_command else line
        if not in_command:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    commands = []
    for line in logical:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        command: list[str] = []
        for token in lexer:
            if token in {"&&", ";"}:
                commands.append(command)
                command = []
            else:
                command.append(token)
        commands.append(command)
    return [c for c in commands if c]


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on Python 3.10 needs tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check_install(command: list[str], where: str) -> None:
    """pip install: the extras exist, a pinned dependency is in pyproject's range, other packages are named there."""
    from packaging.requirements import Requirement

    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    deps = {_norm(Requirement(d).name): Requirement(d) for d in project["dependencies"]}
    named = _norm((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    args = command[command.index("install") + 1 :]
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
            if not arg.startswith("-"):
                continue
        if arg in {"-c", "-r", "--constraint", "--requirement"}:
            skip_next = True
            continue
        if arg.startswith("-"):
            continue
        if m := re.fullmatch(r"(?:\.|-e)(?:\[([\w,-]+)\])?", arg):
            missing = [e for e in (m[1] or "").split(",") if e and e not in extras]
            assert not missing, f"{where}: `{shlex.join(command)}` names extras {missing} absent from pyproject"
            continue
        req = Requirement(arg)
        name = _norm(req.name)
        if name == _norm(project["name"]):
            continue
        if name in deps and req.specifier:
            for spec in req.specifier:
                if spec.operator == "==":
                    assert deps[name].specifier.contains(spec.version), (
                        f"{where}: `{arg}` is outside pyproject's range {deps[name]}"
                    )
            continue
        assert name in named, f"{where}: `{shlex.join(command)}` installs {req.name}, which pyproject.toml never names"


def is_checked_only(command: list[str]) -> str | None:
    """Why a command is checked rather than run, or None when it runs."""
    head = command[0]
    python = head in {"python", "python3"} or head.endswith("/python")
    if head in {"pip", "pip3"} and "install" in command or python and command[1:3] == ["-m", "pip"]:
        return "install"
    if python and command[1:3] == ["-m", "venv"] or head in {".", "source"}:
        return "venv"
    if python and command[1:3] == ["-m", "pytest"] or head == "pytest":
        return "pytest"
    return None


def check_command(kind: str, command: list[str], where: str) -> None:
    if kind == "install":
        check_install(command, where)
    elif kind == "pytest":
        start = command.index("pytest") + 1
        for arg in command[start:]:
            if not arg.startswith("-"):
                assert (ROOT / arg.split("::")[0]).exists(), f"{where}: `{shlex.join(command)}`: no {arg} in the repo"


def kradapter_parser():
    import argparse

    from kradapter import cli

    cli._load_commands()
    return cli.build_parser(), argparse


def parse_only(command: list[str], where: str) -> None:
    """Parse a command with its own argument parser, and check the repository paths it names exist."""
    for token in command:
        for part in token.split("="):
            if part.startswith(REPO_DIRS):
                assert (ROOT / part).exists(), f"{where}: `{shlex.join(command)}` names {part}, absent from the repo"
    parser, _ = kradapter_parser()
    rest: list[str] | None = None
    if command[0] == "kradapter":
        rest = command[1:]
    elif command[0] == "torchrun":
        from torch.distributed.run import get_args_parser

        args = _parse(get_args_parser(), command[1:], command, where)
        if args.module and args.training_script == "kradapter":
            rest = args.training_script_args
    elif command[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser

        args = _parse(launch_command_parser(), command[2:], command, where)
        if args.module and args.training_script == "kradapter":
            rest = args.training_script_args
    else:
        pytest.fail(f"{where}: parse-only does not know how to check `{command[0]}`")
    if rest is not None:
        _parse(parser, rest, command, where)


def _parse(parser, argv: list[str], command: list[str], where: str):
    try:
        return parser.parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{where}: `{shlex.join(command)}` does not parse (exit {exit_.code}; the error is above)")


def with_args(block: Block, command: list[str]) -> list[str]:
    extra = block.key("args")
    parser, argparse = kradapter_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = next((t for t in command[1:] if t in subparsers.choices), None)
    if sub and (per := block.key(f"args.{sub}")):
        extra = f"{extra or ''} {per}"
    return command + shlex.split(extra) if extra else command


# --- the test ------------------------------------------------------------------------------------------------------


def _fail_with_log(block: Block, what: str, result: dict, log: Path) -> None:
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    state = "timed out" if result.get("timed_out") else f"exit {result['rc']}"
    pytest.fail(f"{block.id}: {what}: {state}\n--- output (tail) ---\n{tail}")


def run_python(block: Block, text: str, work: Path, runner: Runner, timeout: float) -> None:
    log = work.parent / "python.log"
    request = {"kind": "python", "code": text, "filename": block.id, "cwd": str(work), "log": str(log)}
    result = runner.run({**request, "timeout": timeout})
    if result["rc"] != 0:
        _fail_with_log(block, "the python block failed", result, log)


def run_shell(block: Block, text: str, work: Path, runner: Runner, timeout: float) -> None:
    commands = shell_commands(text, console=block.lang == "console")
    assert commands, f"{block.id}: a shell block without a command"
    for n, command in enumerate(commands):
        where = f"{block.id} command {n + 1}"
        if kind := is_checked_only(command):
            check_command(kind, command, where)
            continue
        if "parse-only" in block.flags:
            parse_only(command, where)
            continue
        log = work.parent / f"command{n + 1}.log"
        if command[0] == "kradapter" and not SHELL_SYNTAX & set(command):
            argv = with_args(block, command)[1:]
            request = {"kind": "kradapter", "argv": argv, "cwd": str(work), "log": str(log), "timeout": timeout}
            result = runner.run(request)
        else:
            with open(log, "w") as out:
                try:
                    proc = subprocess.run(
                        ["bash", "-c", shlex.join(command) if not SHELL_SYNTAX & set(command) else " ".join(command)],
                        cwd=work,
                        env=offline_env(),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=timeout,
                    )
                    result = {"rc": proc.returncode}
                except subprocess.TimeoutExpired:
                    result = {"rc": -9, "timed_out": True}
        if result["rc"] != 0:
            _fail_with_log(block, f"`{shlex.join(command)}`", result, log)


def check_data(block: Block, text: str, tmp_path: Path) -> None:
    if block.lang == "json":
        json.loads(text)
        return
    import yaml

    data = yaml.safe_load(text)
    if "accelerate-config" in block.flags:
        from accelerate.commands.config.config_args import load_config_from_file

        path = tmp_path / "config.yaml"
        path.write_text(text)
        config = load_config_from_file(str(path))
        assert config.distributed_type.value == data["distributed_type"], block.id


def test_every_block_is_collected_and_markers_are_well_formed():
    """Collection itself: README.md and the docs are read, every marker parses (unknown items fail at import)."""
    pages = {b.page for b in BLOCKS}
    assert "README.md" in pages or "```" not in (ROOT / "README.md").read_text(encoding="utf-8")
    assert any(p.startswith("docs/") for p in pages)
    for block in BLOCKS:
        if "skip" in block.flags or "parse-only" in block.flags:
            assert block.key("reason"), f'{block.id}: skip and parse-only need reason="..."'
        if {"long", "gpu"} & block.flags:
            shrinks = [k for k in block.keys if k == "sub" or k.startswith("args")]
            assert shrinks, f"{block.id}: a long/gpu block must say how it is shrunk (args=... or sub=OLD=>NEW)"


def test_the_marker_parser_and_splitter_do_what_the_docstring_says():
    flags, keys = parse_marker(' long args="--steps 2" args.approx="--size 8 8" sub="a=>b" sub="c=>d"', "x")
    assert flags == {"long"} and keys == {"args": ["--steps 2"], "args.approx": ["--size 8 8"], "sub": ["a=>b", "c=>d"]}
    with pytest.raises(ValueError, match="unknown doctest marker item 'lng'"):
        parse_marker("lng", "x")
    text = "$ kradapter a \\\n    --b 1  # note\noutput line\n$ pip install . && kradapter c; kradapter d\n"
    assert shell_commands(text, console=True) == [
        ["kradapter", "a", "--b", "1"],
        ["pip", "install", "."],
        ["kradapter", "c"],
        ["kradapter", "d"],
    ]
    with pytest.raises(AssertionError, match="absent from pyproject"):
        check_install(["pip", "install", ".[no-such-extra]"], "x")
    with pytest.raises(AssertionError, match="outside pyproject's range"):
        check_install(["pip", "install", "torch==1.0"], "x")
    with pytest.raises(AssertionError, match="never names"):
        check_install(["pip", "install", "left-pad-for-python"], "x")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block_runs_as_written(block: Block, runner, stand_ins, tmp_path):
    if "skip" in block.flags:
        pytest.skip(f"{block.id}: {block.key('reason')}")
    if block.lang in LISTING_LANGS:
        commands = [line for line in block.text.splitlines() if line.startswith("$ ")]
        assert not commands, f"{block.id}: a plain fence holds commands ({commands[0]!r}): tag it ```console"
        return
    assert block.lang in RUN_LANGS, f"{block.id}: language {block.lang!r} is neither run nor a listing"
    missing = [m for m in (block.key("needs") or "").split(",") if m and importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{block.id} needs {', '.join(missing)}, not installed here")
    text = prepared_text(block, stand_ins)
    if block.lang in {"yaml", "yml", "json"}:
        check_data(block, text, tmp_path)
        return
    timeout = float(block.key("timeout", str(TIMEOUT)))
    work = checkout_dir(tmp_path)
    if block.lang == "python":
        run_python(block, text, work, runner, timeout)
    else:
        run_shell(block, text, work, runner, timeout)
