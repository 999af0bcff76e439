import json
import subprocess
import sys

import pytest

from search.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "search", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("flags,score", [(["--groups", "2"], 2.0251), (["--groups", "8"], 0.5564),
                                         (["--depthwise"], 0.5224)])
def test_score_json_prints_the_seed_scores(capsys, flags, score):
    assert main(["score", "--arch", "resnet18", *flags, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"params", "macs", "nonzero_params", "score", "param_term", "macs_term"} <= set(out)
    assert out["score"] == pytest.approx(score, abs=1e-4)
    assert out["score"] == pytest.approx(out["param_term"] + out["macs_term"])


def test_score_json_with_compression(capsys):
    main(["score", "--arch", "resnet20", "--ps", "0.3", "--pu", "0.2", "--qw", "8", "--qa", "8", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 272_474
    assert out["param_term"] == pytest.approx(0.5 * 0.25 * 272_474 / 5.6e6)
    assert out["macs_term"] == pytest.approx(0.7 * 0.25 * out["macs"] / 2.8e8)


def test_score_table(capsys):
    assert main(["score", "--arch", "resnet18", "--groups", "8"]) == 0
    out = capsys.readouterr().out
    for text in ("parameters", "1,561,674", "MACs", "77,714,442", "non-zero", "parameter term", "MAC term",
                 "0.556422"):
        assert text in out


def test_densenet_options_on_the_cli(capsys):
    from search.models import build_model

    def cli_params(*options):
        main(["score", "--arch", "densenet", *options, "--json"])
        return json.loads(capsys.readouterr().out)["params"]

    chosen = cli_params("--growth-rate", "8", "--blocks", "4,4,4", "--groups", "2")
    built = build_model("densenet", num_classes=10, growth_rate=8, blocks=[4, 4, 4], groups=2)
    assert chosen == sum(p.numel() for p in built.parameters())  # each option reached the model
    assert chosen != cli_params("--growth-rate", "12", "--blocks", "4,4,4", "--groups", "2")
    assert chosen != cli_params("--growth-rate", "8", "--blocks", "6,6,6", "--groups", "2")
    assert chosen != cli_params("--growth-rate", "8", "--blocks", "4,4,4", "--groups", "1")


def test_console_script_runs_as_module():
    result = run_cli("score", "--arch", "resnet20", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["params"] == 272_474


@pytest.mark.parametrize("args,fragment", [
    (["score", "--arch", "vgg"], "unknown arch 'vgg'; known archs: densenet, resnet18, resnet20"),
    (["score", "--arch", "resnet18", "--groups", "3"], "groups=3 does not divide"),
    (["score", "--arch", "resnet18", "--qw", "3"], "qw must be one of"),
    (["score", "--arch", "resnet18", "--qa", "64"], "qa must be one of"),
    (["score", "--arch", "resnet18", "--ps", "0.5", "--pu", "0.5"], "ps + pu must be below 1"),
    (["score", "--arch", "resnet18", "--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["score", "--arch", "resnet18", "--width", "abc"], "invalid float value"),
    (["score", "--arch", "resnet18", "--width", "0"], "width must be a number > 0"),
    (["score", "--arch", "resnet20", "--blocks", "3,3"], "resnet20 has no option 'blocks'"),
    (["score", "--arch", "densenet", "--blocks", "a,b"], "--blocks takes layer counts"),
    (["score"], "the following arguments are required: --arch"),
    (["explode"], "invalid choice"),
])
def test_bad_input_is_one_line_exit_2(args, fragment):
    result = run_cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0]
    assert result.stdout == ""
