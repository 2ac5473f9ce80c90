#!/usr/bin/env bash
# Docs, lint, types and packaging checks. Run by .ci/run after the test suite, inside its venv (the package and
# its test extras installed); also runs on its own from a checkout with that venv active.
#
#   1. mkdocs build --strict: a broken link, a missing reference, a docstring warning or an undocumented public
#      name (docs/hooks.py) fails it
#   1b. docs/check_site.py: the built site in headless Chromium (math rendered, no request beyond 127.0.0.1,
#      screenshots); skipped, saying so, when Chromium is absent (CI installs it with: apt-get install -y chromium)
#   2. ruff check, ruff format --check, mypy (the library core, [tool.mypy] in pyproject.toml)
#   3. python -m build, twine check dist/*
#   4. the sdist installed into a fresh venv, then its own tests from the unpacked sdist (against the installed
#      package, not src/). SDIST_TESTS=quick (default) runs the files that use what the sdist must carry (the
#      test helpers, tests/recipe_fixtures.py, one two-process torchrun run from tests/distributed/): the whole suite
#      already ran twice against src/ in .ci/run's legs; SDIST_TESTS=all runs it all from the sdist.
#
# Every step runs; the script fails at the end if any did, naming them.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export NO_MKDOCS_2_WARNING=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
failed=()
step() {  # step NAME COMMAND...: run it, remember a failure, go on
    local name=$1; shift
    echo "=== $name: $*"
    if "$@"; then echo "=== $name: ok"; else echo "=== $name: FAILED"; failed+=("$name"); fi
}

pip install --quiet ".[docs,dev]" || { echo "installing the docs and dev extras failed"; exit 1; }

step docs mkdocs build --strict --site-dir "$ROOT/site"
site_check() {
    # CI machines start without Chromium: Debian's package, where this runs as root with apt (bounded; else skipped)
    if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        timeout 600 bash -c 'apt-get install -y -q chromium >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }' \
            || echo "site-check: installing Debian's chromium failed"
    fi
    if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${CHROMIUM:-}" ]; then
        echo "site-check: SKIPPED: no Chromium here (apt-get install -y chromium, or set CHROMIUM=/path/to/chrome)"
        return 0
    fi
    python docs/check_site.py --site "$ROOT/site" --shots "$ROOT/site-screenshots"
}
step site-check site_check
step ruff-check ruff check .
step ruff-format ruff format --check .
step mypy mypy

rm -rf dist
step build python -m build
step twine twine check --strict dist/*

sdist_tests() {
    local sdist work venv
    sdist=$(ls dist/kradapter-*.tar.gz) || return 1
    work=$(mktemp -d)
    venv="$work/venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet torch==2.13.0 || return 1   # first: an unpinned torch pulls a CUDA build
    "$venv/bin/pip" install --quiet "$sdist[test]" || return 1
    tar -xzf "$sdist" -C "$work" || return 1
    cd "$work"/kradapter-*/ || return 1
    # The tests must run against the installed package: the unpacked src/ is not on the path.
    "$venv/bin/python" -c "import kradapter, sys; assert 'site-packages' in kradapter.__file__, kradapter.__file__" \
        || return 1
    local args=(tests)
    if [ "${SDIST_TESTS:-quick}" != all ]; then
        # what the installed package must carry for its tests to run: the helpers, the fixtures, the scripts torchrun
        # launches; the suite itself ran in both legs against src/
        args=(tests/test_smoke.py tests/test_compat.py tests/test_import_graph.py tests/test_kradapter_math.py
              tests/test_kradapter_save_load.py tests/test_peft_contract.py tests/test_bounds.py
              tests/test_recipes_text.py "tests/test_distributed.py::test_two_processes_train_like_one[ddp]")
    fi
    PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest -p no:cacheprovider "${args[@]}"   # -q comes from pyproject
    local rc=$?
    cd "$ROOT" && rm -rf "$work"
    return $rc
}
step sdist-tests sdist_tests

if [ ${#failed[@]} -gt 0 ]; then
    echo "package_and_docs: FAILED: ${failed[*]}"
    exit 1
fi
echo "package_and_docs: all checks passed"
