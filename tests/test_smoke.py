import subprocess
import sys


def test_cli_version_and_info():
    out = subprocess.run([sys.executable, "-m", "kradapter", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("kradapter ")
    out = subprocess.run([sys.executable, "-m", "kradapter", "info"], capture_output=True, text=True)
    assert out.returncode == 0 and "kradapter" in out.stdout and "KRAdapterConfig" in out.stdout
