"""tests/conftest.py: a missing piece of the machine is one line, a skip outside CI, and a failure under CI=true."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

# A piece that is there, and three that are not: a server port nobody listens on, a program that is not at its path,
# a command that is not on PATH. The pieces keep their names, so the tests below use the suite's own markers.
OVERRIDES = """
import sys
from dataclasses import replace
PIECES["postgresql"] = replace(PIECES["postgresql"], port=1)
PIECES["chromium"] = replace(PIECES["chromium"], path="/nonexistent/chromium")
PIECES["shellcheck"] = replace(PIECES["shellcheck"], command="no-such-shellcheck")
PIECES["mariadb"] = replace(PIECES["mariadb"], path=sys.executable, port=None)
"""

TESTS = """
import pytest

@pytest.fixture
def postgres():
    raise AssertionError("the fixture must not run without its server")

def test_needs_nothing():
    pass

def test_database(postgres):
    pass

@pytest.mark.needs("chromium")
def test_browser():
    pass

@pytest.mark.needs("shellcheck")
@pytest.mark.parametrize("n", [1, 2])
def test_tool(n):
    pass

@pytest.mark.needs("mariadb")
def test_present_piece():
    pass
"""


def run_inner(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text() + OVERRIDES)
    (tmp_path / "test_inner.py").write_text(TESTS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider",
                           f"--rootdir={tmp_path}", str(tmp_path)], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)


def missing_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("missing piece: ")]


def test_outside_ci_the_tests_skip_with_one_line_per_missing_piece(tmp_path):
    r = run_inner(tmp_path, ci=None)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "2 passed, 4 skipped" in out, out
    lines = missing_lines(out)
    assert len(lines) == 3, out
    assert "PostgreSQL unreachable at 127.0.0.1:1" in lines[0] and "[1 test(s) need it: they skip]" in lines[0]
    assert "Chromium missing (/nonexistent/chromium): apt-get install chromium" in lines[1]
    assert "shellcheck missing (no no-such-shellcheck on PATH)" in lines[2] and "[2 test(s)" in lines[2]
    # -rfEs: each reason in the summary, at the test's own place; the tests that need nothing or a present piece ran
    summary = out.split("short test summary")[1]
    assert "SKIPPED [1] test_inner.py: PostgreSQL unreachable at 127.0.0.1:1" in summary, out
    assert "SKIPPED [1] test_inner.py:14: Chromium missing" in summary, out
    assert "SKIPPED [2] test_inner.py:18: shellcheck missing" in summary, out
    assert "the fixture must not run" not in out


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_the_tests_fail(tmp_path, ci):
    r = run_inner(tmp_path, ci=ci)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "2 passed, 4 errors" in out, out
    assert all("they fail (CI=true)" in line for line in missing_lines(out)) and len(missing_lines(out)) == 3, out
    assert "ERROR test_inner.py::test_browser - Failed: CI=true and Chromium missing (/nonexistent/chromium)" in out
    assert "skipped" not in out and "the fixture must not run" not in out


def test_a_run_that_needs_no_missing_piece_says_nothing(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text() + OVERRIDES)
    (tmp_path / "test_inner.py").write_text("def test_needs_nothing():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--rootdir={tmp_path}",
                        str(tmp_path)], capture_output=True, text=True, env={**os.environ, "CI": "true"},
                       cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and not missing_lines(r.stdout), r.stdout

