"""``micronet-search report``: a self-contained page about a study, checked in a real headless Chromium."""

import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from test_dashboard import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, finished_study

from search import optuna_compat as compat
from search.results.report import IMPORTANCE_SEED
from search.trial import record


def cli(*args):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=300)


def add_stopped_failed_and_running(study):
    """The cases a finished tiny study lacks: a trial stopped early, one refused, one failed, one still running."""
    stopped = study.ask()
    compat.storage_of(study).set_trial_intermediate_value(compat.trial_id(stopped), 1, 0.2)
    record.write(stopped, pruned_reason="epoch 1: below the rivals")
    study.tell(stopped, state=TrialState.PRUNED)
    refused = study.ask()
    record.write(refused, pruned_reason="cannot build this candidate: groups 3 do not divide 16 channels")
    study.tell(refused, state=TrialState.PRUNED)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    running = study.ask()
    compat.storage_of(study).set_trial_intermediate_value(compat.trial_id(running), 1, 0.3)
    return stopped.number, refused.number, failed.number, running.number


@pytest.mark.needs("chromium")  # tests/conftest.py: skips without it, fails under CI=true
def test_report_page_shows_the_study_in_chromium(tmp_path):
    from playwright.sync_api import sync_playwright

    study, storage = finished_study(tmp_path, n_trials=5)
    stopped, refused, failed, running = add_stopped_failed_and_running(study)
    complete = sorted(t.number for t in study.get_trials(states=(TrialState.COMPLETE,)))
    front = sorted(t.number for t in study.best_trials)
    with_curves = sorted(t.number for t in study.get_trials() if t.intermediate_values)
    importance = {i: optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
        target=lambda t, i=i: t.values[i]) for i in (0, 1)}

    out = tmp_path / "report.html"
    result = cli("report", "--storage", storage, "--study", "tiny", "--out", str(out))
    assert result.returncode == 0, result.stderr
    page_text = out.read_text()
    assert "<script" in page_text and '<script src="http' not in page_text  # plotly.js inlined: no network

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 1800})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"file://{out}")
            page.wait_for_function("() => document.querySelectorAll('#front .scatterlayer path.point').length > 0",
                                   timeout=30_000)
            traces = page.evaluate("""() => document.getElementById('front').data.map(
                t => ({name: t.name, numbers: t.customdata}))""")
            by_name = {t["name"]: sorted(t["numbers"]) for t in traces}
            assert by_name["Pareto front"] == front
            assert sorted(by_name["Pareto front"] + by_name["trials"]) == complete
            assert page.locator("#front .scatterlayer path.point").count() == len(complete)
            curves = page.evaluate("() => document.getElementById('curves').data.map(t => t.customdata[0])")
            assert sorted(curves) == with_curves and running in curves and stopped in curves
            for i, div in ((0, "importance-accuracy"), (1, "importance-score")):
                bars = page.evaluate(f"() => {{ const t = document.getElementById('{div}').data[0];"
                                     f" return Object.fromEntries(t.y.map((n, k) => [n, t.x[k]])); }}")
                assert bars == pytest.approx(importance[i]), div
            problems = page.locator("#problems").inner_text()
            assert "stopped early" in problems and "below the rivals" in problems
            assert "refused before training" in problems and "groups 3 do not divide" in problems
            assert "failed" in problems
            assert "1 running" in page.locator("#summary").inner_text()
            SCREENSHOTS.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "report.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()

    md = cli("report", "--storage", storage, "--study", "tiny", "--format", "md", "--out", "-")
    assert md.returncode == 0, md.stderr
    assert "## Pareto front" in md.stdout
    for n in front:
        assert f"\n| {n} | " in md.stdout


def test_bad_report_input_is_one_line(tmp_path):
    study, storage = finished_study(tmp_path, n_trials=1)
    for args, fragment in (
        (["--study", "nope"], "no study 'nope'"),
        (["--study", "tiny", "--out", str(tmp_path / "no" / "r.html")], "does not exist"),
        (["--study", "tiny", "--format", "pdf"], "invalid choice: 'pdf'"),
    ):
        result = cli("report", "--storage", storage, *args)
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    # a study with one trial: the page is written, with a note in place of the importance plots
    result = cli("report", "--storage", storage, "--study", "tiny", "--out", str(tmp_path / "one.html"))
    assert result.returncode == 0, result.stderr
    assert "needs at least 2 completed trials" in (tmp_path / "one.html").read_text()
