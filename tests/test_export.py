import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import optuna
import pytest
import torch
from onnx import numpy_helper
from optuna.trial import TrialState, create_trial
from torch import nn

import search.export
from search.cli import main
from search.compress import QuantAct
from search.export import (
    ExportError,
    MajorityVote,
    VerificationError,
    load_state_dict_model,
    onnx_predict,
    select_members,
    select_trial,
    verify,
)
from search.models.layers import Act
from search.results.front import front_trials
from search.study.runner import run_study
from search.study.study_file import load_study_file
from search.training.checkpoint import load_candidate_checkpoint
from search.training.data import DataConfig, load_data, normalize
from search.training.trainer import evaluate, predict
from search.trial.objectives import Objectives

OBJECTIVES = Objectives.parse(None)  # accuracy, score: the tiny studies' objectives

SPACE = """\
params:
  arch: {value: resnet20}
  width: {value: 0.25}
  ps: {low: 0.0, high: 0.5}
  pu: {low: 0.0, high: 0.3}
  qw: {choices: [8, 32]}
  qa: {choices: [8, 32]}
"""

# Three fixed candidates: dense float, pruned with 8-bit weights and activations, pruned with 8-bit weights only.
ENQUEUE = """\
enqueue:
  - {ps: 0.0, pu: 0.0, qw: 32, qa: 32}
  - {ps: 0.3, pu: 0.2, qw: 8, qa: 8}
  - {ps: 0.5, pu: 0.3, qw: 8, qa: 32}
"""
DATA = DataConfig(name="digits", subset=400)


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real finished study of three trials, plus a pruned trial, a complete trial without checkpoint and a
    (dominated) trial whose checkpoint is garbage.

    Three epochs of batches of 8 (not test_study's 2 × 32) so that the models beat chance (30-40 %) and the
    accuracy checks mean something.
    """
    tmp = tmp_path_factory.mktemp("export")
    (tmp / "space.yaml").write_text(SPACE)
    path = tmp / "tiny.yaml"
    path.write_text(f"""\
name: tiny
space: {tmp / 'space.yaml'}
storage: sqlite:///{tmp / 'tiny.db'}
artifacts: {tmp / 'artifacts'}
data: {{name: digits, subset: 400}}
sampler: {{name: random, seed: 3}}
train: {{epochs: 3, batch_size: 8, lr: 0.1}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 3
{ENQUEUE}""")
    study = run_study(load_study_file(path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    study.add_trial(create_trial(state=TrialState.PRUNED, params={}, distributions={},
                                 user_attrs={"pruned_reason": "below the 50th percentile at epoch 2"}))
    study.add_trial(create_trial(values=[0.0, 100.0], params={}, distributions={}))  # no checkpoint
    garbage = tmp / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp / "artifacts"))
    artifact = optuna.artifacts.upload_artifact(artifact_store=store, file_path=str(garbage), study_or_trial=study)
    study.add_trial(create_trial(values=[0.0, 100.0], params={}, distributions={},
                                 user_attrs={"checkpoint_artifact_id": artifact}))
    return SimpleNamespace(tmp=tmp, storage=f"sqlite:///{tmp / 'tiny.db'}", study=study, store=store,
                           dense=0, q8=1, w8=2, pruned=3, no_checkpoint=4, corrupt=5)


def args(trained, *rest):
    return ["--storage", trained.storage, "--study", "tiny", *rest]


@pytest.fixture(scope="module")
def q8_export(trained):
    """The 8-bit (weights and activations) pruned trial exported in all formats by the CLI, with --verify."""
    out = trained.tmp / "q8"
    result = cli("export", *args(trained, "--trial", str(trained.q8), "--out", str(out), "--verify"))
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    print(result.stdout)
    return out


# The quickstart's space and data, small: three enqueued candidates, trained for seconds. The first is the quickstart's
# own 16-bit one (without its distillation) and has the lowest score of the three, so it is on the front whatever
# the accuracies.
QUICKSTART_ENQUEUE = """\
enqueue:
  - {arch: resnet20, width: 0.5, groups: 4, depthwise: false, ps: 0.5, pu: 0.0, qw: 16, qa: 16, distillation: false,
     lr: 0.1}
  - {arch: resnet20, width: 0.25, groups: 1, depthwise: false, ps: 0.0, pu: 0.0, qw: 16, qa: 4, distillation: false,
     lr: 0.1}
  - {arch: resnet20, width: 0.25, groups: 1, depthwise: false, ps: 0.0, pu: 0.0, qw: 32, qa: 32, distillation: false,
     lr: 0.1}
"""


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """A finished study of the quickstart's space (see QUICKSTART_ENQUEUE), with its 16-bit member on the front."""
    tmp = tmp_path_factory.mktemp("quickstart")
    path = tmp / "quickstart.yaml"
    path.write_text(f"""\
name: quickstart
space: {Path(__file__).resolve().parents[1] / 'spaces' / 'quickstart.yaml'}
storage: sqlite:///{tmp / 'quickstart.db'}
artifacts: {tmp / 'artifacts'}
data: {{name: digits, subset: 400}}
sampler: {{name: random, seed: 0}}
train: {{epochs: 6, batch_size: 8}}
stopper: {{name: none, skip_dominated: false}}
n_trials: 3
{QUICKSTART_ENQUEUE}""")
    study = run_study(load_study_file(path))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    return SimpleNamespace(tmp=tmp, study=study, args=["--storage", f"sqlite:///{tmp / 'quickstart.db'}", "--study",
                                                      "quickstart"], q16=0)


# --- choosing trials (synthetic fronts: the geometry is known) ---

def synthetic(points):
    study = optuna.create_study(directions=["maximize", "minimize"])
    for acc, score in points:
        study.add_trial(create_trial(values=[acc, score], params={}, distributions={},
                                     user_attrs={"checkpoint_artifact_id": "x"}))
    return study


def test_select_trial_by_number_accuracy_and_knee():
    # normalized over the front, (0.85, 0.3) lies farthest from the line between (0.5, 0.1) and (0.95, 1.0)
    study = synthetic([(0.5, 0.1), (0.85, 0.3), (0.9, 0.6), (0.95, 1.0), (0.6, 0.7)])
    assert select_trial(study, trial=4).number == 4  # any complete trial, on the front or not
    assert select_trial(study, knee=True).number == 1
    assert select_trial(study, min_accuracy=0.86).number == 2
    assert select_trial(study, min_accuracy=0.0).number == 0
    with pytest.raises(ExportError, match=r"reaches validation accuracy 0.99; the best is 0.9500 \(trial 3\)"):
        select_trial(study, min_accuracy=0.99)
    with pytest.raises(ExportError, match="exactly one"):
        select_trial(study, trial=1, knee=True)


def test_max_score_takes_the_most_accurate_member_within_it():
    # front by score: (0.5, 0.1), (0.85, 0.3), (0.9, 0.6), (0.95, 1.0); trial 4 is dominated
    study = synthetic([(0.5, 0.1), (0.85, 0.3), (0.9, 0.6), (0.95, 1.0), (0.6, 0.7)])
    assert select_trial(study, max_score=0.7).number == 2  # not 4 (off the front), not 3 (score 1.0)
    assert select_trial(study, max_score=0.3).number == 1  # the bound itself is allowed
    assert select_trial(study, max_score=5.0).number == 3
    assert select_trial(study, max_score=0.7, min_accuracy=0.8).number == 1  # with a floor: the lowest score
    with pytest.raises(ExportError, match=r"has a score <= 0.05; the lowest is 0.1 \(trial 0\)"):
        select_trial(study, max_score=0.05)
    with pytest.raises(ExportError, match=r"both validation accuracy >= 0.9 and a score <= 0.5"):
        select_trial(study, max_score=0.5, min_accuracy=0.9)
    with pytest.raises(ExportError, match="--max-score is a score > 0"):
        select_trial(study, max_score=0.0)
    with pytest.raises(ExportError, match="exactly one"):
        select_trial(study, max_score=0.5, knee=True)


def test_knee_of_one_or_two_members_is_the_best_accuracy_per_score():
    assert select_trial(synthetic([(0.5, 0.1), (0.9, 1.0)]), knee=True).number == 0
    assert select_trial(synthetic([(0.1, 0.1), (0.9, 0.5)]), knee=True).number == 1
    assert select_trial(synthetic([(0.7, 0.2)]), knee=True).number == 0
    # a straight-line front has no bend: the same rule decides
    assert select_trial(synthetic([(0.2, 0.1), (0.5, 0.4), (0.8, 0.7)]), knee=True).number == 0


def test_select_members():
    study = synthetic([(0.5, 0.1), (0.85, 0.3), (0.9, 0.6), (0.95, 1.0), (0.6, 0.7)])
    assert [t.number for t in select_members(study, top_k=2)] == [3, 2]
    assert [t.number for t in select_members(study, trials=[4, 0])] == [4, 0]
    with pytest.raises(ExportError, match="only 4 members"):
        select_members(study, top_k=5)
    with pytest.raises(ExportError, match="given twice"):
        select_members(study, trials=[1, 1])


def test_majority_vote_breaks_ties_by_summed_probabilities():
    class Fixed(nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.register_buffer("logits", torch.tensor([logits]))

        def forward(self, x):
            return self.logits.expand(len(x), -1)

    two_for_class_1 = MajorityVote([Fixed([0.0, 1.0, 0.0]), Fixed([0.0, 1.0, 0.0]), Fixed([9.0, 0.0, 0.0])])
    assert two_for_class_1(torch.zeros(2, 1)).argmax(1).tolist() == [1, 1]  # votes win over confidence
    tie = MajorityVote([Fixed([0.0, 1.0, 0.0]), Fixed([5.0, 0.0, 0.0])])  # one vote each: the surer one wins
    scores = tie(torch.zeros(1, 1))
    assert scores.argmax(1).item() == 0
    assert scores.floor().tolist() == [[1.0, 1.0, 0.0]]  # the integer part counts the votes


# --- one model ---

def test_export_writes_a_complete_card(trained, q8_export):
    card = json.loads((q8_export / "model_card.json").read_text())
    t = trained.study.trials[trained.q8]
    assert sorted(p.name for p in q8_export.iterdir()) == ["README.md", "model.onnx", "model.torchscript.pt",
                                                         "model_card.json", "state_dict.pt"]
    for key in ("candidate", "num_classes", "bits", "pruning", "complexity", "score", "score_terms", "measured_score",
                "measured_score_terms", "val_accuracy", "test_accuracy", "test_images", "dataset", "preprocessing",
                "versions", "study", "trial", "files", "how_to_load"):
        assert key in card, key
    assert card["trial"] == trained.q8 and card["study"] == "tiny"
    assert card["candidate"] == t.user_attrs["candidate"]
    assert card["bits"] == {"qw": 8, "qa": 8}
    assert card["score"] == pytest.approx(OBJECTIVES.value(t, "score"))
    assert card["score_terms"]["param_term"] + card["score_terms"]["macs_term"] == pytest.approx(card["score"])
    assert card["measured_score"] == pytest.approx(t.user_attrs["measured_score"])
    assert card["val_accuracy"] == pytest.approx(OBJECTIVES.accuracy(t))
    for key in ("dense_params", "dense_macs", "compressed_params", "compressed_macs", "nonzero_params"):
        assert card["complexity"][key] == t.user_attrs[key]
    assert card["complexity"]["exported_nonzero_params"] <= card["complexity"]["nonzero_params"]
    assert set(card["versions"]) >= {"torch", "optuna", "micronet-search"}
    assert card["preprocessing"]["input_shape"] == [3, 32, 32] and len(card["preprocessing"]["mean"]) == 3
    readme = (q8_export / "README.md").read_text()
    assert "torch.jit.load" in readme and "onnxruntime" in readme and "load_state_dict_model" in readme


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:FutureWarning")
def test_card_test_accuracy_is_a_fresh_evaluation(trained, q8_export, tmp_path):
    card = json.loads((q8_export / "model_card.json").read_text())
    data = load_data(DATA)
    assert card["test_images"] == len(data.y_test)
    # the study's own checkpoint, fake-quantized and not baked: the same predictions
    file = tmp_path / "ckpt.pt"
    optuna.artifacts.download_artifact(artifact_store=trained.store, file_path=str(file),
                                       artifact_id=trained.study.trials[trained.q8].user_attrs["checkpoint_artifact_id"])
    model, meta = load_candidate_checkpoint(file)
    assert evaluate(model, data.x_test, data.y_test, meta["mean"], meta["std"]) == pytest.approx(card["test_accuracy"])
    mean, std = card["preprocessing"]["mean"], card["preprocessing"]["std"]
    rebuilt = load_state_dict_model(q8_export)
    assert evaluate(rebuilt, data.x_test, data.y_test, mean, std) == pytest.approx(card["test_accuracy"])
    scripted = torch.jit.load(str(q8_export / "model.torchscript.pt"))
    assert evaluate(scripted, data.x_test, data.y_test, mean, std) == pytest.approx(card["test_accuracy"])


def test_onnx_matches_torch(q8_export):
    card = json.loads((q8_export / "model_card.json").read_text())
    data = load_data(DATA)
    mean, std = card["preprocessing"]["mean"], card["preprocessing"]["std"]
    torch_logits = predict(load_state_dict_model(q8_export), data.x_test, mean, std)
    onnx_logits = onnx_predict(q8_export / "model.onnx", data.x_test, mean, std)
    per_image = (onnx_logits - torch_logits).abs().amax(1)
    print(f"ONNX vs torch, qw=qa=8: max |Δlogit| {per_image.max():.3g}, median {per_image.median():.3g}, "
          f"{int((per_image > 1e-3).sum())} of {len(per_image)} images above 1e-3")
    # 8-bit activations round: a value on a rounding boundary may land on the neighbouring level in one runtime
    assert per_image.median() <= 1e-3
    assert (onnx_logits.argmax(1) == torch_logits.argmax(1)).float().mean() >= 0.99
    assert per_image.max() < 0.05


def test_exported_8_bit_weights_have_at_most_256_values_per_channel(q8_export):
    state = torch.load(q8_export / "state_dict.pt", weights_only=True)
    convs = [(k, w) for k, w in state.items() if k.endswith("weight") and w.dim() == 4]
    assert convs
    for key, w in convs:
        for channel in w:
            assert len(torch.unique(channel)) <= 256, key
    zeros = sum(int((w == 0).sum()) for _, w in convs) / sum(w.numel() for _, w in convs)
    assert zeros >= 0.2  # pu = 0.2 of the weights stay removed


def test_min_accuracy_and_knee_pick_front_members_and_force_replaces(trained, capsys):
    front = front_trials(trained.study)
    best = max(OBJECTIVES.accuracy(t) for t in front)
    cheapest_best = min((t for t in front if OBJECTIVES.accuracy(t) >= best),
                        key=lambda t: OBJECTIVES.value(t, "score"))
    out = trained.tmp / "picked"
    assert main(["export", *args(trained, "--min-accuracy", str(best), "--out", str(out),
                                 "--format", "state_dict")]) == 0
    assert json.loads((out / "model_card.json").read_text())["trial"] == cheapest_best.number
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model_card.json", "state_dict.pt"]

    assert main(["export", *args(trained, "--knee", "--out", str(out), "--format", "state_dict")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", *args(trained, "--knee", "--out", str(out), "--format", "state_dict", "--force")]) == 0
    assert json.loads((out / "model_card.json").read_text())["trial"] == expected_knee(front).number
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".picked.")]  # no temporary folders left

    empty = trained.tmp / "empty"
    empty.mkdir()
    assert main(["export", *args(trained, "--knee", "--out", str(empty), "--format", "state_dict")]) == 0
    assert (empty / "state_dict.pt").is_file()


def expected_knee(front):
    """The documented rule, written out again."""
    if len(front) >= 3:
        acc = np.array([OBJECTIVES.accuracy(t) for t in front])
        score = np.array([OBJECTIVES.value(t, "score") for t in front])
        a, s = (acc - acc.min()) / np.ptp(acc), (score - score.min()) / np.ptp(score)
        i0, i1 = int(np.argmin(score)), int(np.argmax(score))
        d = np.abs((s[i1] - s[i0]) * (a[i0] - a) - (s[i0] - s) * (a[i1] - a[i0]))
        if d.max() > 1e-9:
            return front[int(np.argmax(d))]
    return max(front, key=lambda t: OBJECTIVES.accuracy(t) / OBJECTIVES.value(t, "score"))


def test_failed_verification_writes_nothing(trained, capsys, monkeypatch):
    monkeypatch.setattr("search.export.verification.ACCURACY_TOLERANCE", -1.0)  # no accuracy can pass
    out = trained.tmp / "never"
    assert main(["export", *args(trained, "--trial", str(trained.w8), "--out", str(out), "--format", "state_dict",
                                 "--verify")]) == 1
    err = capsys.readouterr().err
    assert "verification failed: state_dict test accuracy" in err and err.count("\n") == 1
    assert not out.exists() and not [p for p in trained.tmp.iterdir() if p.name.startswith(".never.")]


# --- ONNX against torch: boundary flips of quantized activations pass, export bugs do not ---

@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
def test_verify_every_front_member_of_a_quickstart_study(quickstart, capsys):
    front = front_trials(quickstart.study)
    assert quickstart.q16 in [t.number for t in front]
    data = load_data(DATA)
    measured = []
    for t in front:
        out = quickstart.tmp / f"front-{t.number}"
        code = main(["export", *quickstart.args, "--trial", str(t.number), "--out", str(out), "--verify"])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        card = json.loads((out / "model_card.json").read_text())
        quantizers, check = card["activation_quantizers"], card["onnx_check"]
        assert check["rule"] == ("strict" if card["bits"]["qa"] == 32 else "rounding-tolerant")
        assert {q["bits"] for q in quantizers} == ({card["bits"]["qa"]} if quantizers else set())
        if card["bits"]["qa"] == 16:
            # resnet20 has 19 activations: the stem's and two per block
            assert check["rounding_ops"] == {"Round": 0, "Cast to float16": len(quantizers)} and len(quantizers) == 19
        # torch without oneDNN convolves with other kernels, so other values land on the other side of a rounding
        # boundary: what a CPU whose float arithmetic differs in the last bits does
        with torch.backends.mkldnn.flags(enabled=False):
            report = verify(out, data=data)
        measured.append(f"trial {t.number} qw {card['bits']['qw']} qa {card['bits']['qa']}: export --verify\n"
                        f"{printed.out}torch without oneDNN: max {report.onnx_max_abs_diff:.3g}, median "
                        f"{report.onnx_median_abs_diff:.3g}")
    print("\n".join(measured))


def _scale_last_conv_weight(path, factor):
    """Multiply the weight of the last convolution of an ONNX file by ``factor``."""
    graph = onnx.load(str(path))
    name = [n for n in graph.graph.node if n.op_type == "Conv"][-1].input[1]
    weight = next(w for w in graph.graph.initializer if w.name == name)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * np.float32(factor), name))
    onnx.save(graph, str(path))


def test_export_verify_catches_a_wrong_onnx_weight_and_writes_nothing(quickstart, capsys, monkeypatch):
    write = search.export.files.write_graphs

    def write_wrong(model, folder, formats, example, output):  # an exporter that gets one weight 1 % wrong
        files = write(model, folder, formats, example, output)
        _scale_last_conv_weight(folder / files["onnx"], 1.01)
        return files

    monkeypatch.setattr(search.export.build, "write_graphs", write_wrong)  # where the exports look it up
    out = quickstart.tmp / "wrong-weight"
    assert main(["export", *quickstart.args, "--trial", str(quickstart.q16), "--out", str(out), "--verify"]) == 1
    err = capsys.readouterr().err
    assert "verification failed: ONNX logits differ from torch's" in err, err
    assert "torchscript" not in err and "state_dict" not in err and "ONNX graph" not in err, err
    assert not out.exists()


def test_verify_catches_a_missing_16_bit_activation_quantizer(quickstart):
    out = quickstart.tmp / "missing-quantizer"
    assert main(["export", *quickstart.args, "--trial", str(quickstart.q16), "--out", str(out)]) == 0
    data = load_data(DATA)
    verify(out, data=data)
    card = json.loads((out / "model_card.json").read_text())
    n = len(card["activation_quantizers"])
    # the ONNX file of the same model with its last float16 rounding left out: a plain ReLU there
    model = load_state_dict_model(out)
    [m for m in model.modules() if isinstance(m, QuantAct)][-1].__class__ = Act
    example = normalize(data.x_test[:2], card["preprocessing"]["mean"], card["preprocessing"]["std"])
    search.export.files.write_graphs(model, out, ["onnx"], example, "logits")
    with pytest.raises(VerificationError, match=f"the ONNX graph holds 0 Round, {n - 1} Cast to float16 where the "
                                                f"model's activation quantizers need 0 Round, {n} Cast to float16"):
        verify(out, data=data)


def test_verify_derives_the_onnx_check_for_a_card_without_one(quickstart):
    """Cards written before onnx_check existed: verify derives it from the model, here rebuilt from TorchScript."""
    out = quickstart.tmp / "old-card"
    assert main(["export", *quickstart.args, "--trial", str(quickstart.q16), "--out", str(out), "--format",
                 "torchscript,onnx"]) == 0
    path = out / "model_card.json"
    card = json.loads(path.read_text())
    recorded = card.pop("onnx_check")
    del card["activation_quantizers"]
    path.write_text(json.dumps(card))
    report = verify(out, data=load_data(DATA))
    assert report.onnx_reference == "torchscript" and report.onnx_rule == "rounding-tolerant"
    assert report.onnx_tolerance == pytest.approx(recorded["max_tolerance"])
    assert report.onnx_median_tolerance == pytest.approx(recorded["median_tolerance"])
    assert report.onnx_rounding_ops == recorded["rounding_ops"]


# --- the ensemble ---

def test_ensemble_of_three_verifies(trained):
    out = trained.tmp / "vote"
    members = f"{trained.dense},{trained.q8},{trained.w8}"
    result = cli("ensemble", "--study", "tiny", "--trials", members, "--out", str(out), "--verify",
                 env={"MICRONET_STORAGE": trained.storage})
    assert result.returncode == 0, result.stderr
    print(result.stdout)
    card = json.loads((out / "model_card.json").read_text())
    trials = trained.study.trials
    assert [m["trial"] for m in card["members"]] == [trained.dense, trained.q8, trained.w8]
    assert card["score"] == pytest.approx(sum(OBJECTIVES.value(trials[n], "score")
                                              for n in (trained.dense, trained.q8, trained.w8)))
    assert card["score_convention"] == "seed 000's convention: the sum of the members' scores"
    for m in card["members"]:
        assert m["candidate"] == trials[m["trial"]].user_attrs["candidate"]
        assert m["val_accuracy"] == pytest.approx(OBJECTIVES.accuracy(trials[m["trial"]]))
        assert (out / m["state_dict"]).is_file()
    data = load_data(DATA)
    vote = load_state_dict_model(out)
    mean, std = card["preprocessing"]["mean"], card["preprocessing"]["std"]
    assert evaluate(vote, data.x_test, data.y_test, mean, std) == pytest.approx(card["test_accuracy"])
    assert {"model.onnx", "model.torchscript.pt", "state_dicts", "model_card.json", "README.md"} == {
        p.name for p in out.iterdir()}


# --- bad input: one line on stderr, exit 2, nothing written ---

@pytest.mark.parametrize("command,make_args,fragment", [
    ("export", lambda t: ["--storage", t.storage, "--study", "nope", "--trial", "0"], "no study 'nope'"),
    ("export", lambda t: args(t, "--trial", "3"), "trial 3 is PRUNED (pruned_reason: below the 50th percentile"),
    ("export", lambda t: args(t, "--trial", "4"), "trial 4 is COMPLETE but has no checkpoint"),
    ("export", lambda t: args(t, "--trial", "99"), "has no trial 99"),
    ("export", lambda t: args(t, "--trial", "5"), "is corrupt or not a micronet-search checkpoint"),
    ("export", lambda t: args(t, "--min-accuracy", "0.9999"), "no Pareto-front member of study 'tiny' reaches"),
    ("export", lambda t: args(t, "--trial", "0", "--format", "tflite"), "unknown format 'tflite'"),
    ("export", lambda t: ["--study", "tiny", "--trial", "0"], "give the storage"),
    ("ensemble", lambda t: args(t, "--trials", "0,0"), "trial 0 is given twice"),
    ("ensemble", lambda t: args(t, "--trials", "0"), "at least 2 members"),
    ("ensemble", lambda t: args(t, "--trials", "0,3"), "trial 3 is PRUNED"),
    ("ensemble", lambda t: args(t, "--top-k", "9"), "--top-k 9: the Pareto front of study 'tiny' has only"),
    ("ensemble", lambda t: args(t, "--trials", "0,x"), "expected trial numbers like 3,7,9"),
])
def test_bad_input_is_one_line_and_writes_nothing(trained, capsys, monkeypatch, command, make_args, fragment):
    monkeypatch.delenv("MICRONET_STORAGE", raising=False)
    out = trained.tmp / "bad"
    code = run_main([command, *make_args(trained), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and err.count("\n") == 1, err
    assert not out.exists() and not [p for p in trained.tmp.iterdir() if p.name.startswith(".bad.")]


def run_main(argv):
    try:
        return main(argv)
    except SystemExit as e:  # argparse errors exit from inside main
        return e.code


def test_unusable_out_dirs(trained, capsys):
    blocker = trained.tmp / "a-file"
    blocker.write_text("x")
    assert main(["export", *args(trained, "--trial", "0", "--out", str(blocker / "model"))]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "x"

    busy = trained.tmp / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    for extra in ([], ["--force"]):  # --force replaces only an earlier export, never an unrelated folder
        assert main(["export", *args(trained, "--trial", "0", "--out", str(busy), *extra)]) == 2
        err = capsys.readouterr().err
        assert "is not empty" in err and err.count("\n") == 1
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]

    # /proc takes no new entries from anyone, root included (whom permission bits do not stop), and says so only
    # when tried
    assert main(["export", *args(trained, "--trial", "0", "--out", "/proc/micronet-export/model")]) == 2
    err = capsys.readouterr().err
    assert "cannot create --out /proc/micronet-export/model: /proc is not writable" in err and err.count("\n") == 1


@pytest.mark.parametrize("damaged", ["state_dict", "torchscript"])
def test_verify_names_a_damaged_file_in_one_line(trained, damaged):
    """A genuinely damaged export (a state dict overwritten with other bytes, a TorchScript file cut in half), not a
    tolerance forced to fail: --verify refuses it and names the file."""
    from search.export.verification import VerificationError, verify

    out = trained.tmp / f"damaged-{damaged}"
    assert main(["export", *args(trained, "--trial", str(trained.w8), "--out", str(out), "--format",
                                 "state_dict,torchscript")]) == 0
    verify(out)  # intact, it passes
    path = out / {"state_dict": "state_dict.pt", "torchscript": "model.torchscript.pt"}[damaged]
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2] if damaged == "torchscript" else bytes(reversed(blob)))
    with pytest.raises(VerificationError, match=rf"{damaged} file {path.name} cannot be loaded"):
        verify(out)
