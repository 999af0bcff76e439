"""Ctrl-C and SIGTERM: the running trial is queued again and the user reads one line about it, not a traceback."""

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.0, high: 0.5}
  lr: {low: 0.02, high: 0.1, log: true}
"""


@pytest.mark.parametrize("command, sig", [("run", signal.SIGINT), ("worker", signal.SIGTERM)])
def test_a_stopped_trial_is_one_line(tmp_path, command, sig):
    (tmp_path / "space.yaml").write_text(SPACE)
    study_file = tmp_path / "stop.yaml"
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study_file.write_text(f"""\
name: stop
space: {tmp_path / 'space.yaml'}
storage: {storage}
artifacts: {tmp_path / 'artifacts'}
data: {{name: synthetic, synthetic_size: 256}}
train: {{epochs: 30, batch_size: 32}}
stopper: {{name: none}}
n_trials: 2
""")
    env = {k: v for k, v in os.environ.items() if k != "MICRONET_STORAGE"}
    p = subprocess.Popen([sys.executable, "-m", "search", command, str(study_file)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def running_epoch():
        try:
            trials = optuna.load_study(study_name="stop", storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            return False
        return bool(trials and trials[0].intermediate_values)

    deadline = time.monotonic() + 240
    while not running_epoch():
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.2)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "trial 0 stopped and queued again" in err, err
    assert err.rstrip().endswith("micronet-search: interrupted"), err
    study = optuna.load_study(study_name="stop", storage=storage)
    assert study.trials[0].state == TrialState.FAIL
    assert [t.system_attrs.get("failed_trial") for t in study.trials if t.state == TrialState.WAITING] == [0]


class _InterruptOnTrial1(optuna.samplers.RandomSampler):
    """Ctrl-C landing while Optuna creates trial 1 (``study.ask``: the sampler's before_trial is where
    TrialSeededSampler re-seeds), before the objective runs."""

    def before_trial(self, study, trial):
        if trial.number == 1:
            raise KeyboardInterrupt
        super().before_trial(study, trial)


def test_ctrl_c_while_optuna_samples_leaves_no_trial_running(tmp_path):
    from search.study.runner import run_study
    from search.study.study_file import load_study_file, open_study

    (tmp_path / "space.yaml").write_text(SPACE)
    path = tmp_path / "ask.yaml"
    path.write_text(f"""\
name: ask
space: {tmp_path / 'space.yaml'}
storage: sqlite:///{tmp_path / 'ask.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: 200}}
train: {{epochs: 1, batch_size: 32}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 3
""")
    loaded = load_study_file(path)
    study = open_study(loaded)
    study.sampler = _InterruptOnTrial1(seed=0)
    with pytest.raises(KeyboardInterrupt):
        run_study(loaded, study=study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert trials[2].system_attrs.get("failed_trial") == 1
    study = run_study(load_study_file(path))  # the study goes on: the queued trial is taken first
    states = [t.state for t in study.get_trials()]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert states.count(TrialState.COMPLETE) == 3
