"""A study report a person can read: one self-contained HTML page (plotly), or a Markdown summary.

What a user asks after a long study, and optuna-dashboard does not draw for a multi-objective one: the front (with
the accuracy floor), how it grew (hypervolume history), every trial's learning curve coloured by how it ended,
which parameters matter for accuracy and which for the score (fANOVA importance per objective, seeded), what early
stopping and reuse saved (epochs run against epochs requested), and which trials failed or were refused, and why.
It reads the study as it is, so it works on a study that is still running.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import ConfigError
from search.results.front import front_trials, hypervolume_history
from search.trial.objectives import Objectives
from search.trial.record import TrialRecord

STATE_COLOURS = {"COMPLETE": "#2a9d3f", "PRUNED": "#e08a00", "FAIL": "#c62828", "RUNNING": "#1f6fd1",
                 "WAITING": "#888888"}
IMPORTANCE_SEED = 0  # fANOVA's forest is random: a fixed seed makes the page and a direct computation agree


@dataclass
class Report:
    study: str
    made: str
    counts: dict[str, int]
    accuracy_floor: float | None
    trials: list[dict]                 # one row per trial (all states); "values" in the objectives' order
    front: list[int]                   # trial numbers of the Pareto front
    hypervolume: list[tuple[int, float]]
    importance: dict[str, dict[str, float]] = field(default_factory=dict)  # objective -> param -> importance
    importance_note: str | None = None
    epochs_requested: int = 0
    epochs_run: int = 0
    epochs_reused: int = 0
    objectives: list[dict] = field(default_factory=list)  # name, label, fmt of each, in the order of the values
    stages: dict | None = None         # with a final stage: both fronts, Kendall's tau, the cost per stage
    base_cost: str | None = None       # with bases: what they cost, apart from the trials' own training

    def index(self, name: str) -> int:
        return next(i for i, o in enumerate(self.objectives) if o["name"] == name)

    @property
    def cost(self) -> dict:
        """The first cost objective (the score by default): the front figure's horizontal axis."""
        return next(o for o in self.objectives if o["name"] != "accuracy")


def build(study: optuna.Study) -> Report:
    """Everything the page shows, read from the study's storage once."""
    trials = study.get_trials(deepcopy=False)
    config = study.user_attrs.get("micronet_config") or {}
    floor = config.get("accuracy_floor")
    requested_default = (config.get("train") or {}).get("epochs")
    objectives = Objectives.of_study(study)
    rows = [_row(t, requested_default) for t in trials]
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    report = Report(
        study=study.study_name, made=f"{datetime.now():%Y-%m-%d %H:%M}",
        counts={s.name: sum(t.state == s for t in trials) for s in TrialState},
        accuracy_floor=floor, trials=rows, front=[t.number for t in front_trials(study)],
        hypervolume=hypervolume_history(study),
        objectives=[{"name": m.name, "label": m.label, "fmt": m.fmt, "log": m.log_axis} for m in objectives],
        epochs_requested=sum(r["epochs_requested"] or 0 for r in finished),
        epochs_run=sum(r["epochs_trained"] for r in finished),
        epochs_reused=sum(r["epochs_reused"] for r in finished),
    )
    report.importance, report.importance_note = importances(study)
    report.stages = stages(study)
    report.base_cost = _base_cost(study)
    return report


def stages(study: optuna.Study) -> dict | None:
    """With a final stage (``study`` the search study or its ``<name>-final`` companion): each stage's front as
    (trial, accuracy, score, search trial) rows, how well the search ranked the finalists (Kendall's τ) and what each
    stage cost (:func:`search.results.front.stage_costs`). None without one."""
    from search import optuna_compat as compat
    from search.results.front import describe_costs, stage_costs
    from search.study.final import SUFFIX, final_study

    storage, name = compat.storage_of(study), study.study_name
    if name.endswith(SUFFIX):
        try:
            search, final = optuna.load_study(study_name=name[:-len(SUFFIX)], storage=storage), study
        except KeyError:  # a study that is merely named so
            return None
    else:
        search, final = study, final_study(storage, name)
    if final is None:
        return None
    objectives = Objectives.of_study(search)

    def rows(s):
        return [{"trial": t.number, "accuracy": objectives.accuracy(t), "score": objectives.first_cost(t),
                 "search_trial": t.user_attrs.get("search_trial")} for t in front_trials(s)]

    costs = stage_costs(search, final)
    return {"search": rows(search), "final": rows(final), "tau": costs.get("tau"), "tau_over": costs.get("tau_over"),
            "costs": describe_costs(costs), "cost_label": objectives.cost_objectives[0].name}


def _base_cost(study: optuna.Study) -> str | None:
    """The bases this study's trials trained and their seconds, when there are any."""
    from search.results.front import stage_costs

    costs = stage_costs(study)
    if not costs["bases"]:
        return None
    return (f"Bases: {costs['bases']} trained for this study ({costs['base_s']:.0f} s), recorded apart from the "
            f"trials' own training ({costs['search_train_s']:.0f} s).")


def _tau_text(stages: dict) -> str:
    if stages["tau"] is None:
        return (f"Kendall's τ between the finalists' search-stage and final validation accuracy: not defined "
                f"({stages['tau_over']} finalist(s) paired).")
    return (f"Kendall's τ between the finalists' search-stage and final validation accuracy: {stages['tau']:.2f} over "
            f"{stages['tau_over']} finalists (1: the search ranked them as the final stage did).")


def importances(study: optuna.Study) -> tuple[dict[str, dict[str, float]], str | None]:
    """fANOVA importance of the parameters for each objective separately (``target=``), over completed trials;
    keyed by the objective's name."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, f"parameter importance needs at least 2 completed trials; the study has {len(complete)}"
    out = {}
    objectives = Objectives.of_study(study)
    for m in objectives:
        try:
            out[m.name] = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=IMPORTANCE_SEED),
                target=lambda t, name=m.name: objectives.value(t, name))
        except (RuntimeError, ValueError) as e:  # e.g. no parameter varied over the completed trials
            return {}, f"parameter importance could not be computed: {e}"
    return out, None


def _row(t: FrozenTrial, requested_default: int | None) -> dict:
    r = TrialRecord.of(t)
    cand = r.candidate or {}
    requested = (cand.get("train") or {}).get("epochs") or requested_default
    curve = dict(sorted(t.intermediate_values.items()))
    reused = r.epochs_saved or 0
    reason = r.pruned_reason
    if t.state == TrialState.FAIL:
        reason = t.system_attrs.get("fail_reason") or reason or "failed (see the worker's log)"
    return {
        "number": t.number, "state": t.state.name, "values": list(t.values) if t.values else None,
        "curve": curve, "epochs_requested": requested, "epochs_trained": max(0, len(curve) - reused),
        "epochs_reused": reused, "wall_s": r.wall_s, "reason": reason,
        "refused": t.state == TrialState.PRUNED and not curve,  # pruned before its first epoch
        "candidate": _candidate_text(cand), "worker": r.worker,
    }


def _candidate_text(c: dict) -> str:
    if not c:
        return ""
    comp = c.get("compression") or {}
    kd = c.get("distillation")
    parts = [f"{c.get('arch')} w{c.get('width', 1):g} g{c.get('groups', 1)}" + (" dw" if c.get("depthwise") else ""),
             f"ps {comp.get('ps', 0):.2f} pu {comp.get('pu', 0):.2f} qw {comp.get('qw', 32)} qa {comp.get('qa', 32)}"]
    if kd:
        parts.append(f"kd T {kd.get('temperature')}")
    return ", ".join(parts)


# --- HTML -------------------------------------------------------------------------------------------------------

def to_html(report: Report) -> str:
    """One self-contained page: plotly.js is inlined once, every figure is a div with a stable id."""
    figures = [("front", _front_figure(report)), ("hypervolume", _hv_figure(report)),
               ("curves", _curves_figure(report))]
    labels = {o["name"]: o["label"] for o in report.objectives}
    figures += [(importance_id(name), _importance_figure(labels.get(name, name), imp))
                for name, imp in report.importance.items()]
    divs = {}
    for i, (div_id, fig) in enumerate(figures):
        divs[div_id] = fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=div_id,
                                   config={"displaylogo": False})
    c = report.counts
    summary = (f"{c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} stopped or refused, {c.get('FAIL', 0)} "
               f"failed, {c.get('RUNNING', 0)} running; {len(report.front)} on the front")
    saving = _savings_text(report)
    importance = "".join(v for k, v in divs.items() if k.startswith("importance")) or \
        f"<p>{html.escape(report.importance_note or '')}</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>micronet-search report: {html.escape(report.study)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:1300px}}h2{{margin-top:32px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td.l,th.l{{text-align:left}}.grid{{display:grid;grid-template-columns:1fr 1fr;gap:12px}}</style></head><body>
<h1>Study {html.escape(report.study)}</h1>
<p id="summary">{summary}. Report made {report.made}.</p>
<h2>Pareto front</h2>{divs['front']}{_stages_html(report)}
<h2>How the front grew</h2>{divs['hypervolume']}
<h2>Learning curves</h2>{divs['curves']}
<h2>Which parameters matter</h2><p>fANOVA importance over the completed trials, for each objective separately.</p>
<div class="grid">{importance}</div>
<h2>What early stopping and reuse saved</h2><p id="savings">{saving}</p>
<h2>Failed and refused trials</h2>{_problems_table(report)}
<h2>All trials</h2>{_trials_table(report)}
</body></html>
"""


def importance_id(objective: str) -> str:
    """The div id of an objective's importance plot (by its name): importance-accuracy, importance-score."""
    return f"importance-{objective}"


def _front_figure(report: Report):
    import plotly.graph_objects as go

    front = set(report.front)
    done = [r for r in report.trials if r["state"] == "COMPLETE"]
    acc, cost = report.index("accuracy"), report.index(report.cost["name"])
    line = "lines+markers" if len(report.objectives) == 2 else "markers"  # more costs: a projection, not a line
    fig = go.Figure()
    for name, rows, style in (("trials", [r for r in done if r["number"] not in front], {"color": "#999"}),
                              ("Pareto front", sorted((r for r in done if r["number"] in front),
                                                      key=lambda r: r["values"][cost]),
                               {"color": "crimson", "size": 9})):
        fig.add_trace(go.Scatter(
            x=[r["values"][cost] for r in rows], y=[r["values"][acc] for r in rows], name=name,
            mode="markers" if name == "trials" else line, marker=style,
            customdata=[r["number"] for r in rows],
            text=[f"trial {r['number']}<br>{r['candidate']}" for r in rows],
            hovertemplate=f"%{{text}}<br>accuracy %{{y:.4f}}<br>{report.cost['name']} %{{x:.4g}}<extra></extra>"))
    if report.accuracy_floor is not None:
        fig.add_hline(y=report.accuracy_floor, line_dash="dash", line_color="#555",
                      annotation_text=f"accuracy floor {report.accuracy_floor:g}")
    fig.update_xaxes(title_text=report.cost["label"], type="log" if report.cost["log"] else "linear")
    fig.update_yaxes(title_text="validation accuracy")
    fig.update_layout(height=460, margin={"t": 30})
    return fig


def _hv_figure(report: Report):
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[n for n, _ in report.hypervolume], y=[h for _, h in report.hypervolume],
                               mode="lines+markers", name="hypervolume"))
    fig.update_xaxes(title_text="trial number")
    fig.update_yaxes(title_text="hypervolume of the completed trials so far")
    fig.update_layout(height=320, margin={"t": 30})
    return fig


def _curves_figure(report: Report):
    import plotly.graph_objects as go

    fig = go.Figure()
    shown = set()
    for r in report.trials:
        if not r["curve"]:
            continue
        state = r["state"]
        fig.add_trace(go.Scatter(
            x=list(r["curve"]), y=list(r["curve"].values()), mode="lines+markers", marker={"size": 4},
            legendgroup=state,
            name=state.lower(), showlegend=state not in shown, customdata=[r["number"]] * len(r["curve"]),
            line={"color": STATE_COLOURS.get(state, "#888"), "width": 1.5},
            hovertemplate=f"trial {r['number']} ({state.lower()})<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>"))
        shown.add(state)
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(title_text="validation accuracy")
    fig.update_layout(height=420, margin={"t": 30})
    return fig


def _importance_figure(objective: str, importance: dict[str, float]):
    import plotly.graph_objects as go

    names = list(importance)[::-1]  # largest on top
    fig = go.Figure(go.Bar(x=[importance[n] for n in names], y=names, orientation="h", name=objective))
    fig.update_layout(title_text=f"for {objective}", height=80 + 28 * len(names), margin={"t": 40, "l": 120})
    fig.update_xaxes(title_text="importance (fANOVA, sums to 1)")
    return fig


def _savings_text(report: Report) -> str:
    req, run, reused = report.epochs_requested, report.epochs_run, report.epochs_reused
    if not req:
        return "No finished trial yet."
    saved = req - run - reused
    text = (f"The finished trials asked for {req} epochs; they trained {run} ({run / req:.0%}), took {reused} from "
            f"reused dense phases, and early stopping or refusal saved {saved} ({saved / req:.0%}).")
    return text if report.base_cost is None else f"{text} {report.base_cost}"


def _stages_html(report: Report) -> str:
    st = report.stages
    if st is None:
        return ""

    def table(rows, title, table_id):
        final = table_id == "final-front"

        def origin(r):
            return f"<td>{'' if r['search_trial'] is None else r['search_trial']}</td>" if final else ""

        body = "".join(f"<tr><td>{r['trial']}</td>{origin(r)}<td>{r['accuracy']:.4f}</td><td>{r['score']:.4g}</td>"
                       f"</tr>" for r in rows)
        head = "<th>search trial</th>" if final else ""
        return (f"<div><h3>{title}</h3><table id='{table_id}'><tr><th>trial</th>{head}<th>accuracy</th>"
                f"<th>{html.escape(st['cost_label'])}</th></tr>{body}</table></div>")

    return (f"<h2>Search and final stage</h2><div class='grid'>{table(st['search'], 'Search front', 'search-front')}"
            f"{table(st['final'], 'Final front', 'final-front')}</div><p id='tau'>{html.escape(_tau_text(st))}</p>"
            f"<p id='stage-costs'>{html.escape(st['costs'])}</p>")


def _problems_table(report: Report) -> str:
    rows = [r for r in report.trials if r["state"] in ("FAIL", "PRUNED")]
    if not rows:
        return "<p>None.</p>"
    body = "".join(
        f"<tr><td>{r['number']}</td><td class='l'>{_ended(r)}</td><td>{len(r['curve'])}</td>"
        f"<td class='l'>{html.escape(r['reason'] or '')}</td></tr>" for r in rows)
    return (f"<table id='problems'><tr><th>trial</th><th class='l'>ended</th><th>epochs</th>"
            f"<th class='l'>reason</th></tr>{body}</table>")


def _ended(r: dict) -> str:
    if r["state"] == "FAIL":
        return "failed"
    return "refused before training" if r["refused"] else "stopped early"


def _trials_table(report: Report) -> str:
    def num(v, fmt):
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    body = "".join(
        f"<tr><td>{r['number']}</td><td class='l'>{r['state'].lower()}</td>"
        + "".join(f"<td>{num(v, f)}</td>" for v, f in zip(_values(report, r), _formats(report), strict=True))
        + f"<td>{len(r['curve'])}</td>"
        f"<td>{num(r['wall_s'], '.0f')}</td><td class='l'>{html.escape(r['candidate'])}</td></tr>"
        for r in report.trials)
    heads = "".join(f"<th>{html.escape(o['name'])}</th>" for o in report.objectives)
    return (f"<table id='trials'><tr><th>trial</th><th class='l'>state</th>{heads}"
            f"<th>epochs</th><th>time s</th><th class='l'>candidate</th></tr>{body}</table>")


def _values(report: Report, r: dict) -> list:
    return list(r["values"]) if r["values"] else [None] * len(report.objectives)


def _formats(report: Report) -> list[str]:
    return [".4f" if o["name"] == "accuracy" else ".4g" for o in report.objectives]


# --- Markdown ---------------------------------------------------------------------------------------------------

def to_markdown(report: Report) -> str:
    c = report.counts
    lines = [f"# Study {report.study}", "",
             f"{c.get('COMPLETE', 0)} complete, {c.get('PRUNED', 0)} stopped or refused, {c.get('FAIL', 0)} failed, "
             f"{c.get('RUNNING', 0)} running. Report made {report.made}.", "", "## Pareto front", "",
             "| trial | " + " | ".join(o["name"] for o in report.objectives) + " | epochs | time s | candidate |",
             "|---:|" + "---:|" * len(report.objectives) + "---:|---:|---|"]
    by_number = {r["number"]: r for r in report.trials}
    for n in report.front:
        r = by_number[n]
        shown = " | ".join(format(v, f) for v, f in zip(r["values"], _formats(report), strict=True))
        lines.append(f"| {n} | {shown} | {len(r['curve'])} | "
                     f"{'' if r['wall_s'] is None else format(r['wall_s'], '.0f')} | {r['candidate']} |")
    if report.hypervolume:
        lines += ["", f"Hypervolume after trial {report.hypervolume[-1][0]}: {report.hypervolume[-1][1]:.5g}."]
    if report.stages is not None:
        st = report.stages
        lines += ["", "## Search and final stage", "", "| search front: trial | accuracy | "
                  f"{st['cost_label']} | final front: trial | from search trial | accuracy | {st['cost_label']} |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for i in range(max(len(st["search"]), len(st["final"]))):
            a = st["search"][i] if i < len(st["search"]) else None
            b = st["final"][i] if i < len(st["final"]) else None
            left = f"{a['trial']} | {a['accuracy']:.4f} | {a['score']:.4g}" if a else " | | "
            right = f"{b['trial']} | {b['search_trial']} | {b['accuracy']:.4f} | {b['score']:.4g}" if b else " | | | "
            lines.append(f"| {left} | {right} |")
        lines += ["", _tau_text(st), "", st["costs"]]
    lines += ["", "## Which parameters matter", ""]
    if report.importance:
        for objective, imp in report.importance.items():
            top = ", ".join(f"{k} {v:.2f}" for k, v in imp.items())
            lines.append(f"- for {objective}: {top}")
    else:
        lines.append(report.importance_note or "")
    lines += ["", "## What early stopping and reuse saved", "", _savings_text(report), "",
              "## Failed and refused trials", ""]
    problems = [r for r in report.trials if r["state"] in ("FAIL", "PRUNED")]
    lines += [f"- trial {r['number']}, {_ended(r)}: {r['reason'] or ''}" for r in problems] or ["None."]
    return "\n".join(lines) + "\n"


def check_out(out: str) -> None:
    """Refuse, before the study is read, a file whose folder does not exist ('-' is stdout)."""
    if out != "-":
        folder = Path(out).resolve().parent
        if not folder.is_dir():
            raise ConfigError(f"cannot write {out}: the folder {folder} does not exist")


def write(text: str, out: str) -> None:
    """Write the page next to its place and rename it: a reader never sees half a page."""
    part = Path(out).resolve().with_name(f".{Path(out).name}.{os.getpid()}.part")
    part.write_text(text)
    os.replace(part, out)
