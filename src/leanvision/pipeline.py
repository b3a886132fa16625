"""Measure a set of models side by side and turn them into results rows.

One place for "evaluate + count + time + write": the quickstart, the recipe runner and the
benchmarks all call :func:`measure_models`, so every report is built the same way.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from leanvision.deploy import DeployedModel, deploy, fold_batchnorm
from leanvision.engine import evaluate
from leanvision.profiling import compare, count_ops, count_params, energy_uj, peak_memory_mb
from leanvision.tasks import task_metrics


class _Runner:
    """A zero-argument callable running ``model`` on a fixed input, for interleaved timing."""

    def __init__(self, model: nn.Module, x: torch.Tensor, backend: str) -> None:
        self.model, self.x, self.backend = model, x, backend

    def __call__(self) -> torch.Tensor:
        return self.model(self.x)


def measure_models(
    models: Mapping[str, nn.Module],
    data: Any,
    *,
    baseline: str,
    method_chains: Mapping[str, Sequence[str]] | None = None,
    batch: int = 32,
    threads: int | None = None,
    repeats: int = 30,
    split: str = "test",
    recipe: str | None = None,
    seed: int | None = None,
    channels_last: bool = True,
    fold_bn: bool = False,
    backend: str = "torch",
    paper: Mapping[str, Mapping[str, Any]] | None = None,
    notes: Mapping[str, str] | None = None,
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Evaluate, count and time every model; returns results.json model rows.

    Accuracy is measured on ``split`` (the held-out test set by default); MACs, parameters and
    energy per image at batch 1; latency at ``batch`` with all models timed interleaved in
    this process (``leanvision.profiling.compare``), on CPU with ``threads`` threads.

    Args:
        models: name → model (the baseline among them).
        data: the DataBundle the models were trained on.
        baseline: name of the reference model (ratios are relative to it).
        method_chains: name → method keys applied to get that model.
        batch: batch size of the latency measurement.
        threads: CPU threads for timing (default: torch's current setting).
        repeats: timed runs per model.
        split: split of the accuracy (``"test"`` or ``"val"``).
        channels_last: time every model in channels_last memory format (weights and input),
            the faster layout for convolutions on CPU (the trainer trains in it too).
        fold_bn: time every model with batch norms folded into the preceding convolutions
            (:func:`leanvision.deploy.fold_batchnorm`), as deployed; a model fx cannot trace
            is timed as is, and its backend says so.
        backend: ``"torch"`` (default): time each PyTorch model as above. A backend of
            :func:`leanvision.deploy.deploy` (``"auto"``, ``"leanvision"``, ``"onnxruntime"``,
            ``"openvino"``): time each PyTorch model deployed there in fp32 at ``batch`` and
            ``threads`` (``"auto"``: on its fastest runtime), so every model runs on the
            runtime it would be deployed with; the accuracy is the PyTorch model's (an fp32
            runtime computes the same function). A model that is already deployed (an
            ``int8`` result) is timed, evaluated and counted as it is, whatever ``backend``.
        paper, notes, extra: per-model additions to the rows.
    """
    if baseline not in models:
        raise KeyError(f"baseline {baseline!r} is not among the models {sorted(models)}")
    size = tuple(data.input_size)  # one image's (C, H, W): the rule in leanvision.shapes
    # copies: the caller's models keep their device, mode and memory layout
    cpu_models = {n: copy.deepcopy(m).to("cpu").eval() for n, m in models.items()}
    loader = data.loader(split)
    rows: list[dict[str, Any]] = []
    x = torch.randn(batch, *size, generator=torch.Generator().manual_seed(0))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    eager = "torch-eager-cpu" + ("-channels_last" if channels_last else "")
    runners = {}
    for n, m in cpu_models.items():
        if backend != "torch" and not isinstance(m, DeployedModel):
            d = deploy(m, backend, "fp32", size, batch=batch, threads=threads)
            runners[n] = _Runner(d, x, d.backend)
            continue
        timed, suffix = m, ""
        if isinstance(m, DeployedModel):
            runners[n] = _Runner(m, x, m.backend)
            continue
        if fold_bn:
            timed, folded = fold_batchnorm(m)
            suffix = "-bn-folded" if folded else "-bn-not-folded"
        runners[n] = _Runner(
            timed.to(memory_format=fmt), x.contiguous(memory_format=fmt), eager + suffix
        )
    with torch.inference_mode():
        lat = compare(runners, size, batch=batch, threads=threads, repeats=repeats)
    for name, model in cpu_models.items():
        acc = evaluate(model, loader, device="cpu")
        ops = count_ops(model, size)
        stats = lat[name]
        row: dict[str, Any] = {
            "name": name,
            "recipe": recipe,
            "method_chain": list((method_chains or {}).get(name, [])),
            "dataset": data.name,
            "split": split,
            "top1": acc.get("top1"),
            "top5": acc.get("top5"),
            "metrics": task_metrics(acc),
            "params": count_params(model),
            "macs": ops.macs,
            "adds": ops.adds,
            "muls": ops.muls,
            "bitops": ops.bitops,
            "latency_ms": {
                "median": stats.median_ms,
                "p90": stats.p90_ms,
                "batch": stats.batch,
                "threads": stats.threads,
                "backend": stats.backend,
            },
            # torch's allocator does not see an onnxruntime or OpenVINO model's memory
            "peak_mem_mb": None
            if isinstance(model, DeployedModel) and not model.in_torch
            else peak_memory_mb(model, size, batch=batch),
            "energy_uj": energy_uj(ops),
            "baseline": baseline,
            "seed": seed,
        }
        if paper and name in paper:
            row["paper"] = dict(paper[name])
        if notes and name in notes:
            row["notes"] = notes[name]
        if extra and name in extra:
            row["extra"] = dict(extra[name])
        rows.append(row)
    return rows


def cpu_info() -> dict[str, Any]:
    """Threads and cores the measurement ran with, and where each native kernel stands in this
    process (built or not, for which ISA, the run-time path its dispatch takes, the build
    error): call it after the measurement, so the kernels it used are loaded."""
    from leanvision import kernels

    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "kernels": {
            name: {k: v for k, v in st.as_dict().items() if k != "ops"}
            for name, st in kernels.status().items()
        },
    }
