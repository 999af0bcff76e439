"""The Pareto front of validation accuracy versus score: rows, hypervolume, plots."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import ConfigError
from search.record import TrialRecord

ROW_KEYS = ("trial", "val_accuracy", "score", "measured_score", "params", "macs", "compressed_params",
            "compressed_macs", "nonzero_params", "arch", "width", "groups", "depthwise", "ps", "pu", "qw", "qa",
            "kd_temperature", "epochs_run", "wall_s", "base_reused")


def front_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Non-dominated completed trials (feasible ones only when the study has an accuracy floor), by score."""
    return sorted(study.best_trials, key=lambda t: (t.values[1], -t.values[0], t.number))


def row(t: FrozenTrial) -> dict:
    a = TrialRecord.of(t)
    cand = a.candidate or {}
    comp = cand.get("compression", {})
    kd = cand.get("distillation") or {}
    return {
        "trial": t.number, "val_accuracy": t.values[0], "score": t.values[1],
        "measured_score": a.measured_score, "params": a.dense_params, "macs": a.dense_macs,
        "compressed_params": a.compressed_params, "compressed_macs": a.compressed_macs,
        "nonzero_params": a.nonzero_params, "arch": cand.get("arch"), "width": cand.get("width"),
        "groups": cand.get("groups"), "depthwise": cand.get("depthwise"), "ps": comp.get("ps"), "pu": comp.get("pu"),
        "qw": comp.get("qw"), "qa": comp.get("qa"), "kd_temperature": kd.get("temperature"),
        "epochs_run": a.epochs_run, "wall_s": a.wall_s, "base_reused": a.base_reused,
        "checkpoint": a.checkpoint_artifact_id,
    }


def front_rows(study: optuna.Study, min_accuracy: float | None = None) -> list[dict]:
    rows = [row(t) for t in front_trials(study)]
    if min_accuracy is not None:
        rows = [r for r in rows if r["val_accuracy"] >= min_accuracy]
    return rows


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """(accuracy, score) a dominates b: no worse in both, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def hypervolume(points: list[tuple[float, float]], reference_score: float, reference_accuracy: float = 0.0) -> float:
    """Area dominated by (accuracy, score) points, bounded by the reference (accuracy, score) corner.

    Two objectives need only a sweep over the points sorted by score; Optuna's own routine is private API.
    """
    pts = sorted((s, a) for a, s in points if s < reference_score and a > reference_accuracy)
    area, best = 0.0, reference_accuracy
    for i, (s, a) in enumerate(pts):
        best = max(best, a)
        right = pts[i + 1][0] if i + 1 < len(pts) else reference_score
        area += (right - s) * (best - reference_accuracy)
    return area


def hypervolume_history(study: optuna.Study, reference_score: float | None = None) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the completed feasible trials so far), one row per completed trial."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]
    if not done:
        return []
    ref = reference_score if reference_score is not None else max(t.values[1] for t in done) * 1.1
    history, points = [], []
    for t in sorted(done, key=lambda t: t.number):
        points.append((t.values[0], t.values[1]))
        history.append((t.number, hypervolume(points, ref)))
    return history


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def plot(study: optuna.Study, path: str | Path) -> Path:
    """All completed trials with the front highlighted, and the hypervolume history; PNG or HTML by extension."""
    path = Path(path)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in front_trials(study)}
    history = hypervolume_history(study)
    others = [t for t in done if t.number not in front]
    best = sorted((t for t in done if t.number in front), key=lambda t: t.values[1])
    title = f"study {study.study_name}: {len(done)} completed trials, {len(best)} on the front"
    if path.suffix == ".png":
        _plot_png(path, others, best, history, title)
    elif path.suffix in (".html", ".htm"):
        _plot_html(path, others, best, history, title)
    else:
        raise ConfigError(f"--plot writes .png or .html files, got {path.name!r}")
    return path


def _plot_png(path, others, best, history, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, hv) = plt.subplots(1, 2, figsize=(12, 5))
    ax.scatter([t.values[1] for t in others], [t.values[0] for t in others], c="0.6", s=18, label="trials")
    ax.plot([t.values[1] for t in best], [t.values[0] for t in best], "o-", c="C3", label="Pareto front")
    for t in best:
        ax.annotate(str(t.number), (t.values[1], t.values[0]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("score (lower is better)")
    ax.set_ylabel("validation accuracy")
    ax.set_xscale("log")
    ax.legend()
    ax.set_title(title, fontsize=10)
    hv.plot([n for n, _ in history], [h for _, h in history], "-", c="C0")
    hv.set_xlabel("trial")
    hv.set_ylabel("hypervolume")
    hv.set_title("hypervolume history", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_html(path, others, best, history, title):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(title, "hypervolume history"))
    fig.add_trace(go.Scatter(x=[t.values[1] for t in others], y=[t.values[0] for t in others], mode="markers",
                             name="trials", text=[f"trial {t.number}" for t in others],
                             marker={"color": "gray"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[t.values[1] for t in best], y=[t.values[0] for t in best], mode="lines+markers",
                             name="Pareto front", text=[f"trial {t.number}" for t in best],
                             marker={"color": "crimson"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=[n for n, _ in history], y=[h for _, h in history], mode="lines",
                             name="hypervolume"), row=1, col=2)
    fig.update_xaxes(title_text="score (lower is better)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_xaxes(title_text="trial", row=1, col=2)
    fig.write_html(str(path), include_plotlyjs=True)
