"""``micronet-search train``: train and compress one candidate, report accuracy, size, cost and speed."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from search.candidate.candidate import Candidate
from search.cli.common import EpochProgress, add_data_arguments, data_overrides, pick_device
from search.config import from_mapping, load_yaml
from search.errors import ConfigError
from search.space.params import add_arguments, flags
from search.training.data import DataConfig, load_data
from search.training.run import run_candidate
from search.training.teacher import TeacherSpec, get_teacher


def add_parser(commands) -> None:
    p = commands.add_parser("train", help="train and compress one candidate", description=__doc__)
    p.add_argument("config", nargs="?", help="YAML file with the candidate (flags override it)")
    # the search parameters' flags come from their table (search.space.params); the rest are train's own
    groups = {name: p.add_argument_group(name) for name in ("model", "compression", "distillation", "training")}
    add_arguments(p, "train", groups=groups)
    k = groups["distillation"]
    k.add_argument("--kd-final-temperature", type=float, help="decrease T linearly to this value (seed 004: 5)")
    k.add_argument("--teacher-arch", help="teacher architecture (default resnet18)")
    k.add_argument("--teacher-epochs", type=int, help="teacher training epochs (default 30)")
    t = groups["training"]
    t.add_argument("--epochs", type=int)
    t.add_argument("--schedule", help="onecycle or cosine")
    t.add_argument("--seed", type=int)
    t.add_argument("--precision", help="auto (default: bf16 autocast where the device computes bf16 natively), bf16 "
                                       "or fp32")
    add_data_arguments(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on the last line of stdout")
    p.set_defaults(handler=run)


def _set(d: dict, key: str, value) -> None:
    if value is not None:
        d[key] = value


def job_from_args(args) -> tuple[Candidate, DataConfig, TeacherSpec]:
    raw = load_yaml(args.config) if args.config else {}
    where = args.config or "train"
    data_raw = dict(raw.pop("data", None) or {})
    teacher_raw = dict(raw.pop("teacher", None) or {})
    cand = dict(raw)
    train = dict(cand.get("train") or {})
    places = {"arch_options": dict(cand.get("arch_options") or {}), "compression": dict(cand.get("compression") or {}),
              "train": train, "augment": dict(train.get("augment") or {}), "candidate": cand}
    for p in flags("train"):
        if p.place == "distillation":
            continue  # below: a temperature switches distillation on
        value = getattr(args, p.name)
        if value is not None and p.name == "blocks":
            try:
                value = [int(x) for x in value.split(",")]
            except ValueError:
                raise ConfigError(f"--blocks takes layer counts separated by commas, got {value!r}") from None
        _set(places[p.place], p.key, value)
    for place in ("arch_options", "compression"):
        if places[place]:
            cand[place] = places[place]
    if places["augment"]:
        train["augment"] = places["augment"]
    kd = cand.get("distillation")
    kd = dict(kd) if isinstance(kd, dict) else ({} if args.kd_temperature is not None else None)
    if kd is not None:
        _set(kd, "temperature", args.kd_temperature)
        _set(kd, "alpha", args.kd_alpha)
        _set(kd, "final_temperature", args.kd_final_temperature)
        cand["distillation"] = kd
    elif args.kd_alpha is not None or args.kd_final_temperature is not None:
        raise ConfigError("--kd-alpha and --kd-final-temperature need --kd-temperature (distillation is off)")
    for key in ("epochs", "schedule", "seed", "precision"):
        _set(train, key, getattr(args, key))
    if train:
        cand["train"] = train
    _set(teacher_raw, "arch", args.teacher_arch)
    _set(teacher_raw, "epochs", args.teacher_epochs)
    data_raw.update(data_overrides(args))
    candidate = Candidate.from_dict(cand, where)
    data = from_mapping(DataConfig, data_raw, f"{where}: data")
    teacher = from_mapping(TeacherSpec, teacher_raw, f"{where}: teacher")
    return candidate, data, teacher


def run(args) -> int:
    candidate, data_config, teacher_spec = job_from_args(args)
    device = pick_device(args.device)
    data = load_data(data_config, device)
    teacher = None
    if candidate.distillation is not None:
        with EpochProgress(f"teacher {teacher_spec.arch}", teacher_spec.epochs) as progress:
            teacher = get_teacher(teacher_spec, data_config, data, on_epoch=progress)
    with EpochProgress(f"{candidate.arch}", candidate.train.epochs) as progress:
        result = run_candidate(candidate, data, teacher, on_epoch=progress, test=True)
    summary = {"arch": candidate.arch, "dataset": data_config.name, "device": str(device), **result.summary()}
    if args.json:
        print(json.dumps(summary))
    else:
        _print(summary, candidate)
    return 0


def _print(s: dict, candidate: Candidate) -> None:
    c = candidate.compression
    console = Console()
    console.print(f"[bold]{candidate.arch}[/] groups={candidate.groups} depthwise={candidate.depthwise} "
                  f"width={candidate.width:g} | ps={c.ps:g} pu={c.pu:g} qw={c.qw} qa={c.qa} | "
                  f"kd={f'T={candidate.distillation.temperature:g}' if candidate.distillation else 'off'} | "
                  f"{s['dataset']} on {s['device']}")
    table = Table()
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_row("validation accuracy", f"{s['val_accuracy']:.2%}")
    table.add_row("test accuracy", f"{s['test_accuracy']:.2%}")
    table.add_row("params (dense → compressed)", f"{s['params']:,} → {s['compressed_params']:,}")
    table.add_row("MACs (dense → compressed)", f"{s['macs']:,} → {s['compressed_macs']:,}")
    table.add_row("non-zero params", f"{s['nonzero_params']:,}")
    table.add_row("weight sparsity", f"{s['sparsity']:.2%}")
    table.add_row("score (the seeds' formula)", f"{s['score']:.6f}", style="bold")
    table.add_row("measured score", f"{s['measured_score']:.6f}")
    table.add_row("epochs", str(s["epochs_run"]))
    table.add_row("wall time", f"{s['wall_s']:.1f} s")
    table.add_row("training images/s", f"{s['train_images_per_s']:,.0f}")
    console.print(table)
