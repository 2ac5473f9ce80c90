"""The process that runs the documentation's code blocks for tests/test_doc_examples.py.

It imports the heavy third-party libraries once (torch, transformers, PEFT, datasets, trl) and then forks a fresh
child per block, so each block pays for its own work and not for ~10 s of imports. It never imports kradapter: a
block that forgets ``import kradapter`` fails here as it would for a reader. Requests arrive as one JSON line each
on stdin; the reply is one JSON line on stdout:

    {"kind": "python", "code": ..., "filename": ..., "cwd": ..., "log": ..., "timeout": ...} -> {"rc": 0, ...}
    {"kind": "kradapter", "argv": [...], "cwd": ..., "log": ..., "timeout": ...}             (the console script)

The child runs in its own process group (killed whole on timeout, with any processes it started) and writes its
stdout and stderr to ``log``.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time
import traceback

PRELOAD = ("torch", "transformers", "transformers.modeling_utils", "transformers.trainer", "peft", "datasets", "trl")


def _child(request: dict) -> int:
    os.chdir(request["cwd"])
    fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        if request["kind"] == "python":
            sys.argv = [request["filename"]]
            code = compile(request["code"], request["filename"], "exec")
            exec(code, {"__name__": "__main__", "__file__": request["filename"]})
            return 0
        from kradapter.cli import main

        sys.argv = ["kradapter", *request["argv"]]
        return int(main() or 0)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _run(request: dict) -> dict:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.setpgid(0, 0)
        os._exit(_child(request))
    deadline = time.monotonic() + request["timeout"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return {"rc": os.waitstatus_to_exitcode(status), "timed_out": False}
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"rc": -9, "timed_out": True}
        time.sleep(0.05)


def main() -> None:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    assert "kradapter" not in sys.modules, "the runner must not import kradapter: blocks import it themselves"
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        print(json.dumps(_run(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
