"""The tiny study the tests share: scikit-learn's digits, ResNet20 at width 0.25, two epochs, random sampling, no
early stopping, everything (space, database, artifacts) under the test's tmp_path."""

from pathlib import Path

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  groups: {choices: [1, 2, 3]}
  ps: {low: 0.0, high: 0.6}
  pu: {low: 0.0, high: 0.3}
  qw: {choices: [8, 32]}
  lr: {low: 0.05, high: 0.2, log: true}
"""


def write_tiny_study(tmp_path: Path, name: str = "tiny", space: str = SPACE, n_trials: int = 4, subset: int = 400,
                     epochs: int = 2, seed: int = 3, extra: str = "", db: str = "tiny",
                     stopper: str = "{name: none, skip_dominated: false}") -> Path:
    """Write the space and the study file ``tmp_path/<name>.yaml`` (database ``tmp_path/<db>.db``, shared by the
    studies of one test; checkpoints in ``tmp_path/artifacts``); ``extra`` is appended to the study file."""
    (tmp_path / "space.yaml").write_text(space)
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"""\
name: {name}
space: {tmp_path / 'space.yaml'}
storage: sqlite:///{tmp_path / f'{db}.db'}
artifacts: {tmp_path / 'artifacts'}
data: {{name: digits, subset: {subset}}}
sampler: {{name: random, seed: {seed}}}
train: {{epochs: {epochs}, batch_size: 32}}
stopper: {stopper}
n_trials: {n_trials}
{extra}""")
    return path
