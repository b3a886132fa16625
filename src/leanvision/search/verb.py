"""``lv.search``: check everything at the door, then hand the method an opened study."""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

from leanvision.errors import ConfigError
from leanvision.search.registry import SearchContext, get_search_method
from leanvision.search.space import ModelSpec, SearchSpace
from leanvision.search.spaces import get_space

__all__ = ["build_kwargs", "search", "smallest_macs", "spec_macs"]

ENUMERATE_MAX = 4096  # a space without a declared smallest member is enumerated up to this size


def build_kwargs(data: Any) -> dict[str, Any]:
    """What a candidate needs from the data to be built: its classes and input channels (and,
    for a detector, the image size it takes)."""
    if data is None:
        return {}
    out = {"num_classes": data.num_classes, "in_chans": int(data.input_size[0])}
    if getattr(getattr(data, "task", None), "name", "") == "detection":
        out["image_size"] = int(data.input_size[-1])
    return out


def spec_macs(spec: ModelSpec, input_size: tuple[int, ...] | None = None, **build: Any) -> int:
    """MACs of one forward of the spec's model at one sample of ``input_size`` (default: the
    model's own)."""
    from leanvision.profiling import count_ops

    model = spec.build(**build).eval()
    size = tuple(input_size or model.pretrained_cfg["input_size"])
    return int(count_ops(model, size).macs)


def smallest_macs(
    space: SearchSpace, input_size: tuple[int, ...] | None = None, **build: Any
) -> tuple[int, dict[str, Any]]:
    """The fewest MACs any member of the space has, and that member.

    Raises:
        ConfigError: the space is too large to enumerate and declares no ``smallest``.
    """
    if space.smallest is not None:
        return spec_macs(space.spec(space.smallest), input_size, **build), space.smallest
    if space.size() > ENUMERATE_MAX:
        raise ConfigError(
            f"space {space.name!r} has {space.size():.3g} members and declares no smallest: "
            "a MACs budget cannot be checked (pass smallest= to SearchSpace)"
        )
    best = min(
        ((spec_macs(space.spec(s), input_size, **build), s) for s in space),
        key=lambda ms: ms[0],
    )
    return best


def search(
    space: str | SearchSpace,
    data: Any = None,
    method: str = "standalone",
    *,
    budget: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    n_trials: int = 20,
    out_dir: str | Path = "runs/search",
    progress: bool = True,
    **hparams: Any,
) -> Any:
    """Search ``space`` for models on ``data`` with a registered search method.

    Args:
        space: a registered space name (``leanvision.search.list_spaces()``) or a SearchSpace.
        data: the DataBundle candidates train and validate on.
        method: a registered search method (``leanvision.search.list_search_methods()``).
        budget: the most MACs a found model may have (one sample at the data's input size).
        storage: None (one SQLite file in ``out_dir``), an Optuna RDB URL, or a journal file;
            several processes given the same storage and ``study`` share the search.
        study: the study's name (default ``"<method>-<space>"``); an existing study resumes.
        n_trials: completed trials wanted, over all workers.
        out_dir: the run directory (the default storage, checkpoints).
        **hparams: the method's hyper-parameters (checked before anything runs).

    Returns:
        a :class:`~leanvision.search.engine.SearchResult`: ``best_spec`` (build it with
        ``spec.build()`` or ``lv.create_model(spec.name, **spec.kwargs)``), the Pareto front,
        every candidate, the study and the search's CPU-hours.

    Raises:
        ConfigError: an unknown space, method, hyper-parameter or bad value; a budget no
            member of the space meets (naming the smallest reachable); an unreachable
            storage; a study that exists with another space.
    """
    found = get_search_method(method)
    config = found.make_config(**hparams)
    space = get_space(space)
    if not isinstance(n_trials, numbers.Integral) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"n_trials={n_trials!r} is not allowed; allowed: an int >= 1")
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or budget <= 0:
            raise ConfigError(f"budget={budget!r} is not allowed; allowed: MACs > 0 or None")
        size = tuple(data.input_size) if data is not None else None
        low, member = smallest_macs(space, size, **build_kwargs(data))
        if low > budget:
            raise ConfigError(
                f"budget={budget:g} MACs: no member of space {space.name!r} meets it; the "
                f"smallest reachable has {low:,} MACs ({member})"
            )
    check = getattr(config, "check_inputs", None)
    if check is not None:
        check(data)
    ctx = SearchContext(
        storage=storage,
        study=study,
        n_trials=int(n_trials),
        budget_macs=None if budget is None else float(budget),
        out_dir=Path(out_dir),
        progress=progress,
    )
    return found.run(space, data, config, ctx)
