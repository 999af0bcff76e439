"""``micronet-search teacher``: train a distillation teacher once and cache it for every trial and worker."""

from __future__ import annotations

import json

from search.cli.common import EpochProgress, add_data_arguments, data_overrides, pick_device
from search.config import from_mapping
from search.training.data import DataConfig, load_data
from search.training.teacher import TeacherSpec, cached_or_trained


def add_parser(commands) -> None:
    p = commands.add_parser("teacher", help="train and cache a distillation teacher", description=__doc__)
    p.add_argument("--arch", default="resnet18", help="teacher architecture (default resnet18)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--force", action="store_true", help="train again even when the cache has this teacher")
    add_data_arguments(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    spec = from_mapping(TeacherSpec, {"arch": args.arch, "epochs": args.epochs, "seed": args.seed, "lr": args.lr},
                        "teacher")
    data_config = from_mapping(DataConfig, data_overrides(args), "data")
    data = load_data(data_config, pick_device(args.device))
    with EpochProgress(f"teacher {spec.arch}", spec.epochs) as progress:
        path, cached, val = cached_or_trained(spec, data_config, data, args.force, on_epoch=progress)
    out = {"path": str(path), "key": path.stem, "cached": cached, "val_accuracy": val}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"teacher {'already cached' if cached else 'trained'}: {path}"
              + (f" (validation accuracy {val:.2%})" if val is not None else ""))
    return 0
