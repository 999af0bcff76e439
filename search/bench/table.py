"""Benchmark rows: each figure with its unit, the anchor it is compared to, the ratio and the target."""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from search.machine import cpu_model, native_bf16


@dataclass(frozen=True)
class Row:
    figure: str
    value: float
    unit: str
    anchor: str = ""               # what the ratio is taken against
    ratio: float | None = None     # value / anchor value
    target: str = ""               # e.g. ">= 3x"
    met: bool | None = None        # None: no target, or not measurable here
    note: str = ""

    def cells(self) -> list[str]:
        if math.isnan(self.value):
            value = "still to be measured"
        elif abs(self.value) >= 100:
            value = f"{self.value:,.0f} {self.unit}"
        else:
            value = f"{self.value:.3g} {self.unit}"
        verdict = "" if self.met is None else ("met" if self.met else "not met")
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}x"
        return [self.figure, value, self.anchor, ratio, self.target, verdict, self.note]


COLUMNS = ["figure", "value", "anchor", "ratio", "target", "verdict", "note"]


def machine(device: torch.device | None = None) -> str:
    """CPU model, whether it computes bf16 natively, and threads, or the GPU's name; and the torch version. The bf16
    flag is named because the model name does not tell it (two AMD EPYCs here differed by 2.2x in trial time)."""
    if device is not None and device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    bf16 = "native bf16 (bf16 training path)" if native_bf16("cpu") else "no native bf16 (float32 training path)"
    return f"{cpu_model()}, {bf16}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def print_table(title: str, rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=180)  # a log file: room for the notes
    table = Table(title=title)
    for c in COLUMNS:
        table.add_column(c, justify="right" if c in ("value", "ratio") else "left", overflow="fold")
    for r in rows:
        table.add_row(*r.cells())
    console.print(table)


def pipe_table(columns: Sequence[str], align: str, rows: Iterable[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table: the header, the alignment row ``align`` (e.g. ``|---|---:|``), one per row."""
    return ["| " + " | ".join(columns) + " |", align, *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(title: str, rows: list[Row], machine_line: str, command: str, extra: str = "") -> str:
    lines = [f"\n## {title} ({datetime.date.today().isoformat()})\n",
             f"Machine: {machine_line}. Command: `{command}`.\n",
             *pipe_table(COLUMNS, "|---|---:|---|---:|---|---|---|",
                         ([c.replace("|", "/") for c in r.cells()] for r in rows))]
    if extra:
        lines.append("\n" + extra.strip() + "\n")
    return "\n".join(lines) + "\n"


def append(path: str | Path, text: str) -> None:
    path = Path(path)
    if not path.exists():
        path.write_text("# Benchmarks\n\nEach section: the machine, the date, the command, the numbers.\n")
    with path.open("a") as f:
        f.write(text)
