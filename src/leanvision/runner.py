"""Run a recipe end to end: data → model → baseline training → stages → measure → report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from leanvision.data import load_data
from leanvision.deploy import DeployedModel
from leanvision.engine import TrainConfig, load_checkpoint, train
from leanvision.errors import RecipeError
from leanvision.methods import compress, get_method
from leanvision.methods.saving import save
from leanvision.models import create_model
from leanvision.pipeline import cpu_info, measure_models
from leanvision.recipe import Recipe
from leanvision.report import write_report, write_results

TEACHER_REFS = ("baseline", "previous")


def _resolve_params(params: dict[str, Any], baseline: nn.Module, previous: nn.Module) -> dict:
    out = dict(params)
    for key, value in params.items():
        if isinstance(value, str) and key in ("teacher",) and value in TEACHER_REFS:
            out[key] = baseline if value == "baseline" else previous
    return out


def _stage_params(
    i: int,
    stage: Any,
    baseline: nn.Module,
    previous: nn.Module,
    run_dir: Path,
    progress: bool,
    seed: int,
) -> dict[str, Any]:
    """Stage ``i``'s hyper-parameters as ``compress`` gets them (teachers resolved, and a
    training stage's checkpoint folder, resume, progress and seed defaulted)."""
    params = _resolve_params(stage.params, baseline, previous)
    if "finetune_epochs" in params or hasattr(get_method(stage.method).config_cls, "out_dir"):
        params.setdefault("out_dir", str(run_dir / f"stage{i}_{stage.method}"))
        params.setdefault("resume", True)
        params.setdefault("progress", progress)
        params.setdefault("seed", seed)
    return params


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    command: str | None = None,
) -> Path:
    """Execute ``recipe``; returns the run folder holding results.json and the report.

    Stage parameters may name ``teacher: baseline`` (the trained baseline) or
    ``teacher: previous`` (the model before this stage).

    Every stage's config is checked before any data is loaded or any model trained: a bad
    value in the last stage fails before the baseline trains.
    """
    run_dir = Path(out_dir or recipe.out_dir or Path("runs") / recipe.name)
    stand_in = nn.Identity()  # teachers are resolved to the real models when the stage runs
    configs = [
        (get_method(st.method), get_method(st.method).make_config(
            **_stage_params(i, st, stand_in, stand_in, run_dir, progress, recipe.seed)))
        for i, st in enumerate(recipe.stages)
    ]  # fmt: skip
    train_kw = {"seed": recipe.seed, "progress": progress, **recipe.train}
    baseline_trains = TrainConfig.from_kwargs(**train_kw).epochs > 0  # checked at the door too
    if baseline_trains:
        train_kw.setdefault("out_dir", str(run_dir / "baseline"))
        train_kw.setdefault("resume", True)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_args = dataclasses.asdict(recipe.data)
    data_options = data_args.pop("options")
    data = load_data(**data_args, **data_options)
    for spec, config in configs:  # what the stages need from the data (before any training)
        spec.check_inputs(config, data)
    kwargs = {
        "num_classes": data.num_classes,
        "in_chans": data.input_size[0],
        **recipe.model.kwargs,
    }
    model = create_model(recipe.model.name, **kwargs)
    if recipe.model.weights is not None:
        weights = load_checkpoint(recipe.model.weights)["model"]
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise RecipeError(
                f"model.weights {recipe.model.weights!r} do not fit {recipe.model.name} "
                f"{kwargs}: {str(e).splitlines()[0]}"
            ) from e
    if baseline_trains:
        train(model, data, **train_kw)
    base_name = recipe.model.name
    models: dict[str, nn.Module] = {base_name: model}
    chains: dict[str, list[str]] = {base_name: []}
    current, chain = model, []
    for i, st in enumerate(recipe.stages):
        params = _stage_params(i, st, model, current, run_dir, progress, recipe.seed)
        current = compress(current, st.method, data=data, **params)
        chain = [*chain, st.method]
        name = f"{base_name}+{'+'.join(chain)}"
        models[name], chains[name] = current, list(chain)
    for name, model in models.items():  # reloadable with lv.load / `leanvision eval --checkpoint`
        stem = run_dir / "models" / name.replace("+", "_")
        if isinstance(model, DeployedModel) and model.has_onnx:  # runs outside PyTorch: its graph
            model.save_onnx(stem.with_suffix(".onnx"))
        elif isinstance(model, DeployedModel):  # compiled in memory (inductor): what it came
            save(model.source, stem.with_name(stem.name + "_source.pt"))  # from; lv.deploy again
        else:
            save(model, stem.with_suffix(".pt"))
    m = recipe.measure
    rows = measure_models(
        models,
        data,
        baseline=base_name,
        method_chains=chains,
        batch=m.batch,
        threads=m.threads,
        repeats=m.repeats,
        split=m.split,
        backend=m.backend,
        recipe=recipe.source or recipe.name,
        seed=recipe.seed,
    )
    info = {"name": recipe.name, "command": command, "cpu": cpu_info(), "notes": step_notes(rows)}
    write_results(run_dir, rows, run_info=info)
    write_report(run_dir)
    return run_dir


def step_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Each stage's model against the one before it and against the first (the baseline):
    latency speed-up (each on the runtime it was measured on), MACs and top-1, computed from
    the measured rows; then whether every stage was faster than the one before."""
    notes, slower = [], []
    if len(rows) < 2:
        return notes
    first = rows[0]
    for prev, row in zip(rows, rows[1:]):
        step = row["method_chain"][-1] if row["method_chain"] else row["name"]
        lat, lat_prev = row["latency_ms"]["median"], prev["latency_ms"]["median"]
        speed = lat_prev / lat
        runtime = row["latency_ms"]["backend"].split("[")[0]
        # a stage that only retrains (kd) hands the runtime the same network: same MACs and
        # parameters on the same runtime; its ratio measures this machine's noise, not the stage
        same = (
            row["macs"] == prev["macs"]
            and row.get("params") == prev.get("params")
            and runtime == prev["latency_ms"]["backend"].split("[")[0]
        )
        if speed <= 1.0:
            slower.append(f"{step} not faster" + (" (weights only)" if same else ""))
        notes.append(
            f"{step}: {speed:.2f}x the speed of the step before ({lat_prev:.2f} -> {lat:.2f} ms, "
            f"{runtime}), "
            f"{first['latency_ms']['median'] / lat:.2f}x the baseline's; MACs "
            f"{first['macs'] / row['macs']:.2f}x fewer than the baseline; "
            f"{_score_change(row, prev)}."
            + (
                " Same network as the step before on the same runtime (weights only): the "
                "speed ratio is timing noise."
                if same
                else ""
            )
        )
    lat = rows[-1]["latency_ms"]
    verdict = "yes" if not slower else f"no ({'; '.join(slower)})"
    notes.append(
        f"Every step faster than the one before (batch {lat['batch']}, {lat['threads']} "
        f"threads): {verdict}; the last model {first['latency_ms']['median'] / lat['median']:.2f}x "
        "the baseline's speed."
    )
    return notes


def _score_change(row: dict[str, Any], prev: dict[str, Any]) -> str:
    """The row's top-1 (or, for another task, its first metric) and the change on ``prev``."""
    if row.get("top1") is not None and prev.get("top1") is not None:
        change = row["top1"] - prev["top1"]
        return f"top-1 {row['top1']:.2f} % ({change:+.2f} pt on the step before)"
    from leanvision.report.tables import fmt_metric, metric_header

    for key, value in (row.get("metrics") or {}).items():
        before = (prev.get("metrics") or {}).get(key)
        change = "" if before is None else f" ({value - before:+.2f} on the step before)"
        return f"{metric_header(key)} {fmt_metric(key, value)}{change}"
    return "no score measured"
