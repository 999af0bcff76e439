"""The documentation: the MkDocs site builds without a warning (a broken link is one), README's code map names every
module, README's links lead somewhere, and .ci/run runs README's test command verbatim."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAP_HEADING = "## The code, in flow order"


@pytest.mark.needs("mkdocs")
def test_the_documentation_site_builds_without_a_warning(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    warnings = [line for line in out.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    assert (tmp_path / "site" / "index.html").exists()


def code_map() -> str:
    """README's map of the code: from its heading to the next section."""
    text = README.read_text()
    assert MAP_HEADING in text, f"README has no section {MAP_HEADING!r}"
    section = text.split(MAP_HEADING, 1)[1]
    return re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]


def modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for p in (ROOT / "search").rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py") and "__pycache__" not in p.parts)


def test_the_readme_code_map_lists_every_module():
    """Each module under search/ appears in the map by its path (search/trial/stopping.py) or dotted name
    (search.trial.stopping): a module added without a line in the map fails here."""
    text = code_map()
    missing = [str(p) for p in modules()
               if p.as_posix() not in text and ".".join(p.with_suffix("").parts) not in text]
    assert not missing, f"README's map ({MAP_HEADING!r}) does not list: {', '.join(missing)}"


def test_the_readme_code_map_lists_no_module_that_is_gone():
    listed = set(re.findall(r"search/[\w/]+\.py", code_map()))
    gone = sorted(p for p in listed if not (ROOT / p).exists())
    assert not gone, f"README's map lists modules that do not exist: {', '.join(gone)}"


def test_the_readme_links_lead_to_files():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text())
    local = [link for link in links if "://" not in link]
    assert local
    broken = [link for link in local if not (ROOT / link).exists()]
    assert not broken, f"README links to missing files: {', '.join(broken)}"


def readme_command(section: str) -> str:
    """The first command of a README section's bash block."""
    text = README.read_text().split(f"## {section}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return block.strip().splitlines()[0]


def test_ci_runs_the_readme_test_command_verbatim():
    command = readme_command("Set up and run the tests")
    last = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1]
    assert last == command


@pytest.mark.parametrize("section", ["Set up and run", "Set up and run the tests"])
def test_the_readme_commands_make_and_use_a_virtual_environment(section):
    """Stock Debian and Ubuntu refuse pip install into the system Python (PEP 668): each command makes .venv and
    calls only what is in it."""
    command = readme_command(section)
    steps = command.split(" && ")
    assert steps[0] == "python3 -m venv .venv", command
    assert all(step.startswith(".venv/bin/") for step in steps[1:]), command
