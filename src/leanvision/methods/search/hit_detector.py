"""Hit-Detector: hierarchical trinity architecture search for object detection.

Guo et al., "Hit-Detector: Hierarchical Trinity Architecture Search for Object Detection",
CVPR 2020 (arXiv 2003.11818; its public code ships the found detector only, never the search).
The backbone, neck and head of a detector are searched together in two steps:

1. **Screening.** Each component's large space of candidate operations is trained as a
   weight-sharing supernet (every operation at every position, outputs summed with architecture
   weights), with group sparsity on the weights: a group is one operation across all of the
   component's positions, so whole operations fall out of the component. The ``keep``
   operations with the largest group norms form the component's sub-space.
2. **Joint search.** The three sub-spaces are searched together, differentiably (softmax over
   each position's architecture weights, DARTS-style), with the detector's losses plus a
   resource term, ``cost_weight * E[MACs] / budget`` (E over the softmax). Each position's
   most likely operation is kept; the found detector is built from its spec and retrained.

Ours, on ``hitdet_fcos`` (:mod:`leanvision.models.hitdet`, FCOS for small images):

- Each component is screened on its own, the two others held at the hand design
  (:func:`~leanvision.models.hitdet.hand_design`), so a supernet holds one component's mixed
  positions at a time; then the joint supernet holds the three sub-spaces.
- The screening weights are raw (not a softmax) and each position's mix divides them by
  their ℓ1 norm, so the group shrinkage changes no output by itself; they are trained by
  proximal gradient: a plain SGD step on the detection loss, then the group soft-threshold
  ``a_g <- a_g * max(0, 1 - arch_lr * sparsity * sqrt(|g|) / ||a_g||)``, which sets whole
  groups to exactly zero (a zeroed operation is no longer computed). The paper does not
  publish its regulariser's form beyond "group sparsity"; this is the group lasso's proximal
  step.
- Architecture weights and network weights learn from the same training batches (single-level,
  first order), not DARTS' alternation with a held-out split. In the screening and the joint
  search alike the architecture weights (and the shrinkage) wait ``arch_warmup_epochs`` while
  the network's weights warm up: without it, a first screening run zeroed seven of the neck's
  eleven operations within its first 40 steps, before any had learned.
- The resource term counts MACs (per operation and position, at the data's image size), not a
  measured latency table. Where the most likely operations exceed the budget, positions are
  moved to cheaper operations of their sub-space, the ones losing the least probability per
  MAC saved first, until the detector fits.
- Bookkeeping: the found architecture is one trial of an Optuna study on the search's storage
  (trained ``epochs`` from scratch and scored on the validation split), so the result is a
  :class:`~leanvision.search.SearchResult` like every search's; each training stage resumes
  from its checkpoint and a finished stage is not run again. ``n_trials`` is not used (one
  architecture is derived).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from leanvision.checks import check_choice, check_int, check_real
from leanvision.engine import Hook, StepContext
from leanvision.errors import ConfigError
from leanvision.methods.search.common import (
    SearchConfig,
    method_study,
    stage_cpu_hours,
    stage_gpu_hours,
    train_candidate,
    train_stage,
)
from leanvision.search import (
    SearchContext,
    SearchSpace,
    make_sampler,
    register_search_method,
    run_study,
)
from leanvision.search.study import fixed_sampler
from leanvision.search.verb import build_kwargs

__all__ = ["ArchHook", "HitDetConfig", "derive", "op_macs", "run_hit_detector"]


class ArchHook(Hook):
    """Trains the architecture weights of a supernet's mixed positions beside its weights.

    ``alphas``: key -> a tensor (one weight per operation), attached to every
    :class:`~leanvision.models.hitdet.MixedOp` of that key. ``mode="raw"``: proximal SGD with
    the group soft-threshold (groups: one operation across the keys); ``mode="softmax"``: Adam,
    with ``cost_weight * E[MACs] / reference`` added to the loss.
    """

    name = "hit_detector_arch"

    def __init__(self, positions: dict[str, list[nn.Module]], mode: str, *, arch_lr: float,
                 sparsity: float = 0.0, macs: dict[str, list[int]] | None = None,
                 reference: float = 1.0, cost_weight: float = 0.0,
                 warmup_epochs: int = 0, keep: int = 1, cost_form: str = "linear",
                 fixed_macs: float = 0.0) -> None:  # fmt: skip
        self.positions, self.mode, self.keep = positions, mode, keep
        self.died: dict[str, int] = {}  # operation -> the proximal step that zeroed its group
        self.steps = 0
        init = (lambda n: torch.full((n,), 1.0 / n)) if mode == "raw" else torch.zeros
        self.alphas = {k: init(len(ms[0].ops)).requires_grad_() for k, ms in positions.items()}
        self.macs = {k: torch.tensor(v, dtype=torch.float32) for k, v in (macs or {}).items()}
        self.arch_lr, self.sparsity = arch_lr, sparsity
        self.reference, self.cost_weight, self.warmup_epochs = reference, cost_weight, warmup_epochs
        self.cost_form, self.fixed_macs = cost_form, fixed_macs
        params = list(self.alphas.values())
        self.opt = (torch.optim.SGD(params, lr=arch_lr) if mode == "raw"
                    else torch.optim.Adam(params, lr=arch_lr, betas=(0.5, 0.999)))  # fmt: skip
        self.epoch = 0
        self._attach()

    def _attach(self) -> None:
        for key, mixed in self.positions.items():
            for m in mixed:
                m.alpha, m.mode = self.alphas[key], self.mode

    def _names(self, key: str) -> list[str]:
        return self.positions[key][0].names

    def groups(self) -> dict[str, float]:
        """Each operation's group norm: its weights over every key that has it (raw mode)."""
        sq: dict[str, float] = {}
        for key, a in self.alphas.items():
            for name, v in zip(self._names(key), a.detach().tolist(), strict=True):
                sq[name] = sq.get(name, 0.0) + v * v
        return {n: v**0.5 for n, v in sq.items()}

    def sizes(self) -> dict[str, int]:
        """How many keys each operation's group spans."""
        out: dict[str, int] = {}
        for key in self.alphas:
            for name in self._names(key):
                out[name] = out.get(name, 0) + 1
        return out

    def ranking(self) -> list[str]:
        """Operations best first: the live ones by group norm per key (RMS), then the zeroed
        ones, the later zeroed first (a regularisation path's order)."""
        norms, sizes = self.groups(), self.sizes()
        live = sorted((n for n in norms if norms[n] > 0),
                      key=lambda n: -norms[n] / sizes[n] ** 0.5)  # fmt: skip
        dead = sorted((n for n in norms if norms[n] == 0), key=lambda n: -self.died.get(n, 0))
        return live + dead

    def expected_macs(self) -> torch.Tensor:
        return sum((self.alphas[k].softmax(0) * self.macs[k]).sum() for k in self.alphas)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.epoch = epoch

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        if self.mode == "softmax" and self.cost_weight > 0:
            ctx.losses["macs"] = self.cost_weight * self.cost()

    def cost(self) -> torch.Tensor:
        """The resource term before its weight: E[MACs] / reference (``"linear"``), or
        max(0, (fixed + E[MACs]) / reference − 1) (``"hinge"``: zero within the budget)."""
        if self.cost_form == "hinge":
            return torch.relu((self.fixed_macs + self.expected_macs()) / self.reference - 1)
        return self.expected_macs() / self.reference

    def before_optimizer_step(self, trainer: Any) -> None:
        if self.epoch >= self.warmup_epochs:
            self.opt.step()
            if self.mode == "raw" and self.sparsity > 0:
                self._prox()
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def _prox(self) -> None:
        """The group lasso's proximal step (threshold ``arch_lr * sparsity * sqrt(group
        size)``): shrink every operation's group, zero the small; never below ``keep`` live
        operations (the weakest go first, the others are left as they are in that step)."""
        norms, sizes = self.groups(), self.sizes()
        scale = {n: max(0.0, 1 - self.arch_lr * self.sparsity * sizes[n] ** 0.5 / max(v, 1e-12))
                 if v > 0 else 0.0 for n, v in norms.items()}  # fmt: skip
        live = [n for n in norms if norms[n] > 0]
        survivors = [n for n in live if scale[n] > 0]
        if len(survivors) < self.keep:  # stop pruning at keep: zero only the weakest
            spare = sorted(live, key=lambda n: -norms[n] / sizes[n] ** 0.5)[: self.keep]
            scale = {n: (1.0 if n in spare else scale[n]) for n in norms}
        self.steps += 1
        for n in live:
            if scale[n] == 0:
                self.died[n] = self.steps
        for key, a in self.alphas.items():
            a.mul_(torch.tensor([scale[n] for n in self._names(key)]))

    def state_dict(self) -> dict[str, Any]:
        return {
            "alphas": {k: a.detach().clone() for k, a in self.alphas.items()},
            "opt": self.opt.state_dict(),
            "died": dict(self.died),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, a in state.get("alphas", {}).items():
                self.alphas[k].copy_(a)
        if "opt" in state:
            self.opt.load_state_dict(state["opt"])
        self.died, self.steps = dict(state.get("died", {})), int(state.get("steps", 0))


@dataclass
class HitDetConfig(SearchConfig):
    """Screening (``screen_epochs`` per component, group ``sparsity``, ``keep`` operations per
    component), the joint search (``search_epochs``, ``cost_weight``, ``cost_form``: the MACs
    term linear in E[MACs] / budget, or a hinge that is zero within the budget), the warm-up of both
    (``arch_warmup_epochs``),
    the architecture weights' ``arch_lr`` (screening, SGD) and ``joint_arch_lr`` (Adam), and the
    found detector's scoring (``epochs``). The network trains with ``opt``/``lr``."""

    version: ClassVar[int] = 1
    screen_epochs: int = 2
    search_epochs: int = 4
    epochs: int = 1
    keep: int = 4
    sparsity: float = 0.05
    arch_lr: float = 0.05
    joint_arch_lr: float = 3e-3
    cost_weight: float = 0.5
    cost_form: str = "linear"
    arch_warmup_epochs: int = 1
    opt: str = "adamw"
    lr: float = 0.002
    weight_decay: float = 0.05

    def validate(self) -> None:
        super().validate()
        for name in ("screen_epochs", "search_epochs", "epochs"):
            check_int(name, getattr(self, name), 1)
        check_int("keep", self.keep, 1)
        check_int("arch_warmup_epochs", self.arch_warmup_epochs, 0)
        short = min(self.search_epochs, self.screen_epochs)
        if self.arch_warmup_epochs >= short:
            raise ConfigError(
                f"arch_warmup_epochs={self.arch_warmup_epochs} is not allowed; allowed: fewer "
                f"than screen_epochs={self.screen_epochs} and search_epochs="
                f"{self.search_epochs} (else the architecture weights never train)"
            )
        check_real("sparsity", self.sparsity, 0.0)
        check_real("arch_lr", self.arch_lr, 0.0, lo_open=True)
        check_real("joint_arch_lr", self.joint_arch_lr, 0.0, lo_open=True)
        check_real("cost_weight", self.cost_weight, 0.0)
        check_choice("cost_form", self.cost_form, ("linear", "hinge"))

    def check_inputs(self, data: Any) -> None:
        super().check_inputs(data)
        if getattr(getattr(data, "task", None), "name", "") != "detection":
            raise ConfigError("hit_detector searches detectors: data must be a detection set, "
                              "e.g. lv.load_data('digits_det')")  # fmt: skip


def _supernet(space: SearchSpace, options: dict[str, list[str]], fixed: dict[str, str],
              data: Any) -> nn.Module:  # fmt: skip
    """A detector with the keys of ``options`` mixed over those operations, the rest fixed."""
    sample = {**fixed, **options}
    spec = space.spec({k: (v if isinstance(v, str) else v[0]) for k, v in sample.items()})
    kwargs = dict(spec.kwargs)
    for part in ("backbone", "neck", "head"):
        keys = space.groups[part]
        kwargs[part] = [sample[k] for k in keys]
    from leanvision.models import create_model

    return create_model(spec.name, **kwargs, **build_kwargs(data))


def op_macs(net: nn.Module, input_size: tuple[int, ...]) -> dict[str, list[int]]:
    """Per mixed key, each operation's MACs at the shapes it saw on one image (summed over the
    key's positions: both head towers, every pyramid level)."""
    from leanvision.models.hitdet import mixed_positions
    from leanvision.profiling import count_ops

    mixed = mixed_positions(net)
    for ms in mixed.values():
        for m in ms:
            m.shapes.clear()
    was = net.training
    with torch.no_grad():
        net.eval()(torch.zeros(1, *input_size))
    net.train(was)
    out = {}
    for key, ms in mixed.items():
        out[key] = [
            sum(int(count_ops(m.ops[i], shape).macs) for m in ms for shape in m.shapes)
            for i in range(len(ms[0].ops))
        ]  # fmt: skip
    return out


def derive(probs: dict[str, list[float]], names: dict[str, list[str]],
           macs: dict[str, list[int]], fixed_macs: float,
           budget: float | None) -> tuple[dict[str, str], float]:  # fmt: skip
    """Each key's most likely operation; over ``budget``, keys move to cheaper operations, the
    smallest loss of probability per MAC saved first. Returns the choice and its MACs."""
    pick = {k: max(range(len(p)), key=lambda i, p=p: (p[i], -i)) for k, p in probs.items()}

    def total() -> float:
        return fixed_macs + sum(macs[k][i] for k, i in pick.items())

    while budget is not None and total() > budget:
        moves = [((probs[k][i] - probs[k][j]) / (macs[k][i] - macs[k][j]), k, j)
                 for k, i in pick.items() for j in range(len(names[k]))
                 if macs[k][j] < macs[k][i]]  # fmt: skip
        if not moves:
            raise ConfigError(f"hit_detector: no member of the sub-spaces fits the budget "
                              f"{budget:,.0f} MACs (cheapest {total():,.0f})")  # fmt: skip
        _, k, j = min(moves)
        pick[k] = j
    return {k: names[k][i] for k, i in pick.items()}, total()


@register_search_method(
    "hit_detector",
    paper="Guo et al., Hit-Detector: Hierarchical Trinity Architecture Search for Object "
    "Detection, CVPR 2020 (arXiv 2003.11818)",
    config=HitDetConfig,
    summary="screen each component's operations with group sparsity, then search backbone, "
    "neck and head jointly (differentiable, MACs term)",
)
def run_hit_detector(space: SearchSpace, data: Any, config: HitDetConfig,
                     ctx: SearchContext) -> Any:  # fmt: skip
    from leanvision.models.hitdet import hand_design, mixed_positions

    if set(space.groups) != {"backbone", "neck", "head"}:
        raise ConfigError(f"hit_detector searches a space grouped as backbone, neck and head; "
                          f"space {space.name!r} has groups {list(space.groups)}")  # fmt: skip
    threads = config.num_threads or torch.get_num_threads()
    size = tuple(data.input_size)
    hand = hand_design()
    fixed = {k: hand[part][i] for part, keys in space.groups.items() for i, k in enumerate(keys)}
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    hours, gpu_hours, screened = 0.0, 0.0, {}
    for part, keys in space.groups.items():  # 1. screening, one component at a time
        done = ctx.out_dir / f"screen_{part}.json"
        if not done.exists():
            options = {k: list(space.choices[k].options) for k in keys}
            net = _supernet(space, options, fixed, data)
            hook = ArchHook(mixed_positions(net), "raw", arch_lr=config.arch_lr,
                            sparsity=config.sparsity, keep=config.keep,
                            warmup_epochs=config.arch_warmup_epochs)  # fmt: skip
            hooks = [hook]
            _, record = train_stage(net, data, config, ctx.out_dir / f"screen_{part}",
                                    config.screen_epochs, hooks, ctx)  # fmt: skip
            kept = hook.ranking()[: config.keep]
            done.write_text(json.dumps({"norms": hook.groups(), "died": hook.died, "kept": kept,
                                        "ranking": hook.ranking(),
                                        "cpu_hours": stage_cpu_hours(record, threads),
                                        "gpu_hours": stage_gpu_hours(record)},
                                       indent=1))  # fmt: skip
        screened[part] = json.loads(done.read_text())
        hours += screened[part]["cpu_hours"]
        gpu_hours += screened[part].get("gpu_hours", 0.0)
    joint_file = ctx.out_dir / "joint.json"
    reference = ctx.budget_macs or float(_hand_macs(space, fixed, data))
    if not joint_file.exists():  # 2. the joint search over the screened sub-spaces
        options = {}
        for part, keys in space.groups.items():
            for k in keys:
                allowed = [o for o in screened[part]["kept"] if space.choices[k].allows(o)]
                options[k] = allowed or [next(o for o in screened[part]["ranking"]
                                              if space.choices[k].allows(o))]  # fmt: skip
        mixed_opts = {k: v for k, v in options.items() if len(v) > 1}
        single = {k: v[0] for k, v in options.items() if len(v) == 1}
        net = _supernet(space, mixed_opts, {**fixed, **single}, data)
        macs = op_macs(net, size)
        fixed_macs = _fixed_macs(space, mixed_opts, {**fixed, **single}, macs, data)
        hook = ArchHook(mixed_positions(net), "softmax", arch_lr=config.joint_arch_lr,
                        macs=macs, reference=reference, cost_weight=config.cost_weight,
                        warmup_epochs=config.arch_warmup_epochs, cost_form=config.cost_form,
                        fixed_macs=fixed_macs)  # fmt: skip
        _, record = train_stage(net, data, config, ctx.out_dir / "joint", config.search_epochs,
                                [hook], ctx)  # fmt: skip
        probs = {k: a.detach().softmax(0).tolist() for k, a in hook.alphas.items()}
        names = {k: mixed_positions(net)[k][0].names for k in probs}
        chosen, total = derive(probs, names, macs, fixed_macs, ctx.budget_macs)
        joint = {"options": options, "probs": probs, "names": names, "macs": macs,
                 "fixed_macs": fixed_macs, "chosen": {**single, **chosen}, "expected_macs": total,
                 "cpu_hours": stage_cpu_hours(record, threads),
                 "gpu_hours": stage_gpu_hours(record)}  # fmt: skip
        joint_file.write_text(json.dumps(joint, indent=1))
    joint = json.loads(joint_file.read_text())
    hours += joint["cpu_hours"]
    gpu_hours += joint.get("gpu_hours", 0.0)
    sample = {k: joint["chosen"][k] for k in space.choices}
    sampler = fixed_sampler(sample, make_sampler("random", config.seed))
    study, objectives = method_study(space, data, config, ctx, "hit_detector", sampler=sampler)

    def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
        return train_candidate(spec, data, config, ctx, trial, ctx.out_dir / "found",
                               config.epochs)  # fmt: skip

    result = run_study(study, space, objectives, evaluate, n_trials=1, threads=threads,
                       progress=ctx.progress)  # fmt: skip
    result.cpu_hours += hours
    result.gpu_hours += gpu_hours
    result.extra.update(screened=screened, joint=joint, supernet_cpu_hours=hours,
                        hand=fixed, reference_macs=reference)  # fmt: skip
    return result


def _hand_macs(space: SearchSpace, fixed: dict[str, str], data: Any) -> int:
    from leanvision.profiling import count_ops

    model = space.spec(fixed).build(**build_kwargs(data)).eval()
    return int(count_ops(model, tuple(data.input_size)).macs)


def _fixed_macs(space: SearchSpace, mixed: dict[str, list[str]], fixed: dict[str, str],
                macs: dict[str, list[int]], data: Any) -> float:  # fmt: skip
    """MACs of everything but the mixed positions: a member's total less its mixed operations."""
    member = {**fixed, **{k: v[0] for k, v in mixed.items()}}
    total = _hand_macs(space, member, data)
    return float(total - sum(macs[k][0] for k in mixed))
