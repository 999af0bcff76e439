"""The Pareto front of the study's objectives (validation accuracy against the costs): rows, hypervolume, plots."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import ConfigError
from search.pareto import weakly_dominates
from search.space.params import columns
from search.trial.objectives import DEFAULT, Objectives, check_hardware
from search.trial.record import TrialRecord

__all__ = ["front_rows", "front_trials", "hypervolume", "hypervolume_history", "plot", "row", "stage_costs"]

# the columns after the objectives' own (val_accuracy, score, ...: Objectives.metric_names)
ROW_KEYS = ("trial", "measured_score", "params", "macs", "compressed_params", "compressed_macs", "nonzero_params",
            *(p.name for p in columns()), "epochs_run", "wall_s", "base_reused", "base_val_accuracy", "search_trial")


def front_trials(study: optuna.Study, mixed_hardware: bool = False) -> list[FrozenTrial]:
    """Non-dominated completed trials (feasible ones only when the study has an accuracy floor), by their first cost
    (the score). A front of measured values (latency) from different hardware is refused unless ``mixed_hardware``."""
    objectives = Objectives.of_study(study)
    check_hardware(objectives, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), mixed_hardware)
    return sorted(study.best_trials, key=lambda t: (objectives.first_cost(t), -objectives.accuracy(t), t.number))


def row(t: FrozenTrial, objectives: Objectives | None = None) -> dict:
    objectives = objectives or Objectives.parse(DEFAULT)
    a = TrialRecord.of(t)
    cand = a.candidate or {}
    out = {"trial": t.number}
    out.update({m.metric_name: v for m, v in zip(objectives, t.values, strict=True)})
    if any(m.when == "measured" for m in objectives):
        out.update(latency_target=a.latency_target, latency_hardware=a.latency_hardware)
    out.update({
        "measured_score": a.measured_score, "params": a.dense_params, "macs": a.dense_macs,
        "compressed_params": a.compressed_params, "compressed_macs": a.compressed_macs,
        "nonzero_params": a.nonzero_params, **{p.name: p.read(cand) for p in columns()},
        "epochs_run": a.epochs_run, "wall_s": a.wall_s, "base_reused": a.base_reused,
        "base_val_accuracy": a.base_val_accuracy, "search_trial": t.user_attrs.get("search_trial"),
        "checkpoint": a.checkpoint_artifact_id,
    })
    return out


def front_rows(study: optuna.Study, min_accuracy: float | None = None, mixed_hardware: bool = False) -> list[dict]:
    objectives = Objectives.of_study(study)
    rows = [row(t, objectives) for t in front_trials(study, mixed_hardware)]
    if min_accuracy is not None:
        rows = [r for r in rows if r["val_accuracy"] >= min_accuracy]
    return rows


def hypervolume(points: list[tuple[float, float]], reference_score: float, reference_accuracy: float = 0.0) -> float:
    """Area dominated by (accuracy, score) points, bounded by the reference (accuracy, score) corner (the default
    objectives; :meth:`Objectives.hypervolume` for any)."""
    return Objectives.parse(DEFAULT).hypervolume(points, (reference_accuracy, reference_score))


def hypervolume_history(study: optuna.Study, reference: tuple[float, ...] | None = None) -> list[tuple[int, float]]:
    """(trial number, hypervolume of the completed feasible trials so far), one row per completed trial; the
    reference is accuracy 0 and 1.1 × each cost's worst value unless given."""
    objectives = Objectives.of_study(study)
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if _feasible(t)]
    if not done:
        return []
    ref = reference if reference is not None else objectives.reference(done)
    # Only the front so far counts: a dominated newcomer leaves the volume as it was, and a new member replaces the
    # ones it dominates. Each step costs the front's size, not the study's (quadratic at 10,000 trials otherwise).
    history, front, volume = [], [], 0.0
    for t in sorted(done, key=lambda t: t.number):
        loss = objectives.loss(t.values)
        if not any(weakly_dominates(objectives.loss(p), loss) for p in front):
            front = [p for p in front if not weakly_dominates(loss, objectives.loss(p))] + [t.values]
            volume = objectives.hypervolume(front, ref)
        history.append((t.number, volume))
    return history


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in t.constraints.values())


def plot(study: optuna.Study, path: str | Path, mixed_hardware: bool = False) -> Path:
    """All completed trials with the front highlighted, one panel per cost objective (accuracy against it), and the
    hypervolume history; PNG or HTML by extension. With two objectives the front is drawn as a line; with more, a
    front member may look dominated in one panel (it wins on another cost), so members are marked, not joined."""
    path = Path(path)
    if path.suffix not in (".png", ".html", ".htm"):
        raise ConfigError(f"--plot writes .png or .html files, got {path.name!r}")
    objectives = Objectives.of_study(study)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in front_trials(study, mixed_hardware)}
    history = hypervolume_history(study)
    others = [t for t in done if t.number not in front]
    best = [t for t in done if t.number in front]
    title = f"study {study.study_name}: {len(done)} completed trials, {len(best)} on the front"
    if path.suffix == ".png":
        _plot_png(path, objectives, others, best, history, title)
    else:
        _plot_html(path, objectives, others, best, history, title)
    return path


def _panels(objectives: Objectives, others, best):
    """Per cost objective: (its Metric, [(x, y) of the other trials], [(x, y, number) of the front members, by x])."""
    def xy(t):
        return objectives.value(t, m.name), objectives.accuracy(t)

    for m in objectives.cost_objectives:
        yield m, [xy(t) for t in others], sorted((*xy(t), t.number) for t in best)


def _plot_png(path, objectives, others, best, history, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(_panels(objectives, others, best))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(6 * (len(panels) + 1), 5))
    for ax, (m, rest, members) in zip(axes, panels, strict=False):
        ax.scatter([x for x, _ in rest], [y for _, y in rest], c="0.6", s=18, label="trials")
        ax.plot([x for x, _, _ in members], [y for _, y, _ in members], "o-" if len(objectives) == 2 else "o",
                c="C3", label="Pareto front")
        for x, y, n in members:
            ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(m.label)
        ax.set_ylabel("validation accuracy")
        if m.log_axis:
            ax.set_xscale("log")
        ax.legend()
    axes[0].set_title(title, fontsize=10)
    hv = axes[-1]
    hv.plot([n for n, _ in history], [h for _, h in history], "-", c="C0")
    hv.set_xlabel("trial")
    hv.set_ylabel("hypervolume")
    hv.set_title("hypervolume history", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_html(path, objectives, others, best, history, title):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    panels = list(_panels(objectives, others, best))
    titles = [title] + [f"accuracy against {m.name}" for m, _, _ in panels[1:]] + ["hypervolume history"]
    fig = make_subplots(rows=1, cols=len(panels) + 1, subplot_titles=titles)
    for col, (m, rest, members) in enumerate(panels, start=1):
        fig.add_trace(go.Scatter(x=[x for x, _ in rest], y=[y for _, y in rest], mode="markers", name="trials",
                                 marker={"color": "gray"}, showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(x=[x for x, _, _ in members], y=[y for _, y, _ in members],
                                 mode="lines+markers" if len(objectives) == 2 else "markers", name="Pareto front",
                                 text=[f"trial {n}" for _, _, n in members], marker={"color": "crimson"},
                                 showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text=m.label, type="log" if m.log_axis else "linear", row=1, col=col)
        fig.update_yaxes(title_text="validation accuracy", row=1, col=col)
    col = len(panels) + 1
    fig.add_trace(go.Scatter(x=[n for n, _ in history], y=[h for _, h in history], mode="lines",
                             name="hypervolume"), row=1, col=col)
    fig.update_xaxes(title_text="trial", row=1, col=col)
    fig.write_html(str(path), include_plotlyjs=True)


def stage_costs(search: optuna.Study, final: optuna.Study | None = None) -> dict:
    """What each stage cost, in seconds of training summed over workers: the bases trained for the study (a base
    loaded from an earlier study's store costs nothing here), the search trials' own training, the final stage's;
    with a final stage, how well the search ranked the finalists (Kendall τ, :func:`search.study.final.kendall_tau`)."""
    bases: dict[str, float] = {}
    stages = {}
    for name, study in (("search", search), ("final", final)):
        if study is None:
            continue
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        for t in trials:
            r = TrialRecord.of(t)
            if r.base_key and r.base_reused is False and r.base_train_s is not None:
                bases[r.base_key] = r.base_train_s
        stages[name] = {"trials": len(trials), "train_s": sum(TrialRecord.of(t).train_s or 0.0 for t in trials)}
    out = {"bases": len(bases), "base_s": sum(bases.values()), **{f"{k}_{n}": v for k, d in stages.items()
                                                                  for n, v in d.items()}}
    if final is not None:
        from search.study.final import kendall_tau

        out["tau"], out["tau_over"] = kendall_tau(final, search)
    return out


def describe_costs(costs: dict) -> str:
    """:func:`stage_costs` in one line."""
    parts = []
    if costs["bases"]:
        parts.append(f"bases: {costs['bases']} trained ({costs['base_s']:.0f} s)")
    parts.append(f"search: {costs['search_trials']} trials ({costs['search_train_s']:.0f} s of training)")
    if "final_trials" in costs:
        parts.append(f"final: {costs['final_trials']} members ({costs['final_train_s']:.0f} s)")
        if costs.get("tau") is not None:
            parts.append(f"Kendall tau search vs final accuracy {costs['tau']:.2f} over {costs['tau_over']}")
    return "; ".join(parts)
