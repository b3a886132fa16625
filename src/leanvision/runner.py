"""Run a recipe end to end: data → model → baseline training → stages → measure → report."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import nn

from leanvision.data import load_data
from leanvision.engine import train
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
    """
    run_dir = Path(out_dir or recipe.out_dir or Path("runs") / recipe.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    for st in recipe.stages:  # fail before any training on an unknown method or key
        get_method(st.method).make_config(
            **_resolve_params(st.params, nn.Identity(), nn.Identity())
        )
    data = load_data(**dataclasses.asdict(recipe.data))
    kwargs = {
        "num_classes": data.num_classes,
        "in_chans": data.input_size[0],
        **recipe.model.kwargs,
    }
    model = create_model(recipe.model.name, **kwargs)
    train_kw = {"seed": recipe.seed, "progress": progress, **recipe.train}
    if train_kw.get("epochs", 30) > 0:
        train_kw.setdefault("out_dir", str(run_dir / "baseline"))
        train_kw.setdefault("resume", True)
        train(model, data, **train_kw)
    base_name = recipe.model.name
    models: dict[str, nn.Module] = {base_name: model}
    chains: dict[str, list[str]] = {base_name: []}
    current, chain = model, []
    for i, st in enumerate(recipe.stages):
        params = _resolve_params(st.params, model, current)
        if "finetune_epochs" in params or hasattr(get_method(st.method).config_cls, "out_dir"):
            params.setdefault("out_dir", str(run_dir / f"stage{i}_{st.method}"))
            params.setdefault("resume", True)
            params.setdefault("progress", progress)
            params.setdefault("seed", recipe.seed)
        current = compress(current, st.method, data=data, **params)
        chain = [*chain, st.method]
        name = f"{base_name}+{'+'.join(chain)}"
        models[name], chains[name] = current, list(chain)
    for name, model in models.items():  # reloadable with lv.load / `leanvision eval --checkpoint`
        save(model, run_dir / "models" / f"{name.replace('+', '_')}.pt")
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
        recipe=recipe.source or recipe.name,
        seed=recipe.seed,
    )
    write_results(
        run_dir, rows, run_info={"name": recipe.name, "command": command, "cpu": cpu_info()}
    )
    write_report(run_dir)
    return run_dir
