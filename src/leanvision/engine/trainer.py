"""The one training loop of leanvision.

Every method trains through :class:`Trainer`; methods change what it does through
:class:`~leanvision.engine.hooks.Hook` objects (extra losses, gradient rules, callbacks), never by
copying the loop. Features: timm optimizers and schedules, channels_last on CPU, AMP on GPU, a
rich progress bar, an atomic checkpoint every epoch, exact resume after a kill, DDP under
``torchrun`` (gloo on CPU, nccl on GPU), and one seed for all randomness.

A run that is killed and resumed trains in stretches. The checkpoint keeps one record per
stretch (:data:`TrainResult.stretches`): the epochs it covered, its wall time (training and
validation), the device it ran on and the code that ran it (git commit and dirty flag), so a
run's total time and every commit and device it trained at survive the resumes.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from timm.optim import create_optimizer_v2, list_optimizers
from timm.scheduler import create_scheduler_v2
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from leanvision.checks import check_choice, check_int, check_real, check_types, field_error
from leanvision.errors import CheckpointError, ConfigError
from leanvision.provenance import git_state
from leanvision.shapes import guarded_forward
from leanvision.tasks import Classification, Task, move_to

from .checkpoint import load_training_checkpoint, save_checkpoint
from .distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from .evaluate import evaluate
from .hooks import Hook, StepContext
from .seed import epoch_seed, seed_everything

console = Console(stderr=True)


#: timm's schedules the trainer steps per update (``create_scheduler_v2``); "none" keeps lr fixed.
#: (timm's "plateau" needs a metric each epoch, which the trainer does not feed it.)
SCHEDULES = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt", "none")


def check_optimizer(name: str, opt: Any) -> None:
    """``opt`` names a timm optimizer (``create_optimizer_v2``'s ``[lookahead_]<name>``)."""
    known = list_optimizers()
    parts = opt.lower().split("_") if isinstance(opt, str) else []
    prefix_ok = len(parts) == 1 or (len(parts) == 2 and parts[0] == "lookahead")
    if not parts or not prefix_ok or parts[-1] not in known:
        raise field_error(
            name, opt, f"a timm optimizer name, e.g. sgd, adam, adamw, lamb ({len(known)} in "
            "timm.optim.list_optimizers()), optionally prefixed 'lookahead_'",
        )  # fmt: skip


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run.

    ``batch_size`` is per process: under ``torchrun`` with N processes the global batch is
    N × batch_size. ``max_steps`` caps the optimizer steps of the run (smoke runs).
    ``eval_every``: validate every that many epochs and after the last; 0 never validates (a
    stage whose validation score nobody reads, e.g. training gates on a frozen model).
    """

    epochs: int = 30
    lr: float = 0.1
    opt: str = "sgd"
    momentum: float = 0.9
    opt_kwargs: dict[str, Any] | None = None
    lr_scales: dict[str, float] | None = None
    weight_decay: float = 5e-4
    sched: str = "cosine"
    warmup_epochs: int = 0
    min_lr: float = 0.0
    batch_size: int | None = None
    label_smoothing: float = 0.0
    clip_grad: float | None = None
    seed: int = 0
    max_steps: int | None = None
    channels_last: bool | None = None
    amp: bool | None = None
    device: str | None = None
    out_dir: str | None = None
    resume: bool = False
    eval_every: int = 1
    progress: bool = True
    log: bool = True
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every field's type, then its range or choice; raises ConfigError naming the field,
        the bad value and what is allowed. The one set of rules for training options: method
        configs check their fine-tuning options through it."""
        check_types(self)
        check_int("epochs", self.epochs, 0)
        check_real("lr", self.lr, 0.0, lo_open=True)
        check_optimizer("opt", self.opt)
        check_real("momentum", self.momentum, 0.0)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_choice("sched", self.sched, SCHEDULES)
        check_int("warmup_epochs", self.warmup_epochs, 0)
        check_real("min_lr", self.min_lr, 0.0)
        check_int("batch_size", self.batch_size, 1, none_ok=True)
        check_real("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        check_real("clip_grad", self.clip_grad, 0.0, lo_open=True, none_ok=True)
        check_int("seed", self.seed, 0)
        check_int("max_steps", self.max_steps, 1, none_ok=True)
        check_int("eval_every", self.eval_every, 0)
        check_int("num_threads", self.num_threads, 1, none_ok=True)
        for name, scale in (self.lr_scales or {}).items():
            check_real(f"lr_scales[{name!r}]", scale, 0.0)
        if self.resume and not self.out_dir:
            raise field_error("resume", self.resume, "True only with out_dir= (the folder "
                              "holding last.pt)")  # fmt: skip

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TrainConfig:
        """Build from keyword arguments; an unknown key is an error naming the allowed ones."""
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - allowed)
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
            )
        return cls(**kwargs)


@dataclass
class TrainResult:
    """What a training run returns.

    Attributes:
        model: the trained model (unwrapped, on its training device, in eval mode).
        history: one dict per epoch (epoch, lr, train_loss, ``train_<the task's running
            metric>``, ``val_<each task metric>``, img_per_s, time_s); for classification
            train_top1, val_top1, val_top5, val_loss.
        best: the history row with the best validation primary metric (top-1 for
            classification).
        final: validation metrics of the final model (empty when ``eval_every=0``).
        checkpoint: path of the last checkpoint, when ``out_dir`` was given.
        steps: optimizer steps taken in total.
        stretches: one record per uninterrupted stretch of training, oldest first (empty
            without ``out_dir``): ``after_epoch`` (the epoch it resumed after, 0 for the
            first), ``to_epoch``, ``wall_s``, ``cpu_s`` (the process's CPU time, every
            thread: unlike the wall time, not inflated by other jobs sharing the cores or by a
            paused process), ``started`` (UTC, ISO 8601) and ``git``
            (``commit``, ``dirty``, ``diff_sha256``). A checkpoint written before stretches
            were recorded yields none for its epochs.
    """

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    steps: int = 0
    stretches: list[dict[str, Any]] = field(default_factory=list)


def _device_label(device: torch.device) -> str:
    """``"cpu"``, or a GPU's name (``"NVIDIA H100 80GB HBM3"``) for the stretch records."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _pick_device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        return torch.device("cuda", local)
    return torch.device("cpu")


def resolve_task(task: Task | None, data: Any, label_smoothing: float = 0.0) -> Task:
    """The task a run trains and measures: ``task``, else the data bundle's ``task``, else
    :class:`~leanvision.tasks.Classification` (with ``label_smoothing``).

    Raises:
        ConfigError: ``task`` is not a Task, or ``label_smoothing`` is set with a task given
            (it is the classification task's option).
    """
    task = task if task is not None else getattr(data, "task", None)
    if task is None:
        return Classification(label_smoothing=label_smoothing)
    if not isinstance(task, Task):
        raise ConfigError(f"task must be a leanvision.tasks.Task, got {type(task).__name__}")
    if label_smoothing:
        raise ConfigError(
            f"label_smoothing={label_smoothing} is an option of the classification task; with "
            f"task={task!r} pass it to the task (Classification(label_smoothing=...))"
        )
    return task


class Trainer:
    """Train ``model`` on ``data`` with ``config``, extended by ``hooks``.

    Args:
        model: the model; the task reads its output (a classifier's is the logits, or a tuple
            whose first item is).
        data: a :class:`leanvision.data.DataBundle`.
        config: a :class:`TrainConfig`.
        hooks: methods' extensions, called in order.
        task: what a batch is, the loss, the metrics and the primary metric (which picks
            ``best``); default: the data bundle's, else classification.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        config: TrainConfig,
        hooks: list[Hook] | None = None,
        task: Task | None = None,
    ) -> None:
        self.model, self.data, self.config = model, data, config
        self.task = resolve_task(task, data, config.label_smoothing)
        self.hooks: list[Hook] = list(hooks or [])
        self.device = _pick_device(config.device)
        self.dist: DistInfo = DistInfo()
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []
        self.best: dict[str, float] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.train_model: nn.Module = model  # DDP wrapper when distributed
        self._input_checked = False
        cl = config.channels_last
        self.channels_last = (self.device.type == "cpu") if cl is None else cl
        amp = config.amp
        self.amp = (self.device.type == "cuda") if amp is None else amp
        if self.amp and self.device.type != "cuda":
            raise ConfigError("amp=True needs a CUDA device; on CPU leave amp unset")

    # ------------------------------------------------------------------ set-up
    @property
    def out_dir(self) -> Path | None:
        return Path(self.config.out_dir) if self.config.out_dir else None

    def _hook_params(self) -> list[nn.Parameter]:
        return [p for h in self.hooks for p in h.parameters()]

    def _setup(self) -> None:
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.dist = init_distributed(self.device)
        seed_everything(cfg.seed)
        self.model.to(self.device)
        for p in self._hook_params():
            p.data = p.data.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        bs = cfg.batch_size or self.data.batch_size
        self.sampler = DistributedSampler(
            self.data.train_set,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=False,
        )
        self.train_loader = self.data.loader("train", batch_size=bs, sampler=self.sampler)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise ConfigError("the training set is empty; nothing to train on")
        opt_kwargs: dict[str, Any] = {}
        if cfg.opt.lower() in ("sgd", "momentum", "nesterov"):
            opt_kwargs["momentum"] = cfg.momentum
        opt_kwargs.update(cfg.opt_kwargs or {})
        extra = self._hook_params()
        if any(p.requires_grad for p in self.model.parameters()):
            target = _scaled_groups(self.model, cfg) if cfg.lr_scales else self.model
            self.optimizer = create_optimizer_v2(
                target, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, **opt_kwargs
            )
            for h in self.hooks:
                params = h.parameters()
                if params:
                    self.optimizer.add_param_group(
                        {"params": params, "weight_decay": h.weight_decay}
                    )
        elif extra:  # a frozen model: only the hooks' parameters train (e.g. SCOP's factors)
            self.optimizer = create_optimizer_v2(
                extra, opt=cfg.opt, lr=cfg.lr, weight_decay=0.0, **opt_kwargs
            )
        else:
            raise ConfigError("nothing to train: the model has no trainable parameters")
        self.scheduler = None
        if cfg.sched and cfg.sched != "none" and cfg.epochs > 0:
            self.scheduler, _ = create_scheduler_v2(
                self.optimizer,
                sched=cfg.sched,
                num_epochs=cfg.epochs,
                warmup_epochs=cfg.warmup_epochs,
                min_lr=cfg.min_lr,
                warmup_lr=cfg.lr * 0.01 if cfg.warmup_epochs else 0.0,
                step_on_epochs=False,
                updates_per_epoch=self.steps_per_epoch,
            )
        if self.dist.enabled and any(p.requires_grad for p in self.model.parameters()):
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids)
        else:
            self.train_model = self.model

    # ------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else {},
            "scheduler": self.scheduler.state_dict() if self.scheduler else {},
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best": self.best,
            "hooks": {f"{i}:{h.name}": h.state_dict() for i, h in enumerate(self.hooks)},
            "config": {k: v for k, v in dataclasses.asdict(self.config).items()},
            "stretches": self._saved_stretches(),
        }

    def _start_stretch(self) -> None:
        """Open this fit's record (after a resume); the git state only when it is saved."""
        self._stretch_t0, self._stretch_cpu0 = time.perf_counter(), time.process_time()
        git: dict[str, Any] = {}
        if self.out_dir is not None and self.dist.is_main:
            state = git_state()
            git = {"commit": state.commit, "dirty": state.dirty, "diff_sha256": state.diff_sha256}
        self._stretch = {
            "after_epoch": self.epoch,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "git": git,
            "device": _device_label(self.device),
        }

    def _saved_stretches(self) -> list[dict[str, Any]]:
        """The records as this save writes them (what :class:`TrainResult` returns)."""
        self.saved_stretches = self._stretches()
        return self.saved_stretches

    def _stretches(self) -> list[dict[str, Any]]:
        """The earlier stretches and this one (when it has trained an epoch)."""
        current = getattr(self, "_stretch", None)
        if current is None or self.epoch <= current["after_epoch"]:
            return list(self.past_stretches)
        now = {
            **current,
            "to_epoch": self.epoch,
            "wall_s": time.perf_counter() - self._stretch_t0,
            "cpu_s": time.process_time() - self._stretch_cpu0,
        }
        return [*self.past_stretches, now]

    def _save(self) -> Path | None:
        if self.out_dir is None or not self.dist.is_main:
            return None
        return save_checkpoint(self._state(), self.out_dir / "last.pt")

    def _try_resume(self) -> None:
        if not (self.config.resume and self.out_dir):
            return
        path = self.out_dir / "last.pt"
        if not path.exists():
            return
        state = load_training_checkpoint(path, map_location=self.device)  # checks keys, types
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit this model "
                f"({type(self.model).__name__}): {str(e).splitlines()[0]}"
            ) from e
        try:  # torch and hooks raise KeyError/ValueError/... on state of another run
            if state.get("optimizer"):
                self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state.get("scheduler"):
                self.scheduler.load_state_dict(state["scheduler"])
            hook_states = state.get("hooks", {})
            for i, h in enumerate(self.hooks):
                key = f"{i}:{h.name}"
                if key in hook_states:
                    h.load_state_dict(hook_states[key])
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds optimizer, scheduler or hook state that does "
                f"not fit this run ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}"
                "); resume with the same settings, or delete it to start over"
            ) from e
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.history = list(state.get("history", []))
        self.best = dict(state.get("best", {}))
        self.past_stretches = [dict(r) for r in state.get("stretches", [])]
        if self.config.log and self.dist.is_main:
            console.log(f"resumed from {path} after epoch {self.epoch}")

    # -------------------------------------------------------------- the loop
    def _call(self, method: str, *args: Any) -> None:
        for h in self.hooks:
            getattr(h, method)(self, *args)

    def _done(self) -> bool:
        cap = self.config.max_steps
        return self.epoch >= self.config.epochs or (cap is not None and self.global_step >= cap)

    def fit(self) -> TrainResult:
        """Run the training; returns a :class:`TrainResult`."""
        self._setup()
        self.past_stretches: list[dict[str, Any]] = []
        self._try_resume()
        self.saved_stretches = list(self.past_stretches)
        self._start_stretch()
        self._call("on_train_start")
        show = self.config.progress and self.dist.is_main
        columns = [
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "loss {task.fields[loss]:.3f} {task.fields[metric]} {task.fields[value]:5.1f} "
                "{task.fields[ips]:6.0f} img/s"
            ),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=console, disable=not show, transient=True) as progress:
            while not self._done():
                row = self._train_epoch(progress)
                self.epoch += 1
                every = self.config.eval_every
                if every and (self.epoch % every == 0 or self._done()):
                    val = self._validate()
                    row.update({f"val_{k}": v for k, v in val.items() if k != "n"})
                self.history.append(row)
                key = f"val_{self.task.primary}"
                if key in row and self.task.better(row[key], self.best.get(key)):
                    self.best = dict(row)
                self._call("on_epoch_end", self.epoch, row)
                self._save()
                barrier(self.dist)
                if self.config.log and self.dist.is_main:
                    console.log(self._log_line(row))
        self._call("on_train_end")
        final = self.history[-1] if self.history else {}
        final_val = {k[4:]: v for k, v in final.items() if k.startswith("val_")}
        if not final_val and self.config.eval_every:
            final_val = self._validate()
        self.model.eval()
        ckpt = self.out_dir / "last.pt" if self.out_dir and self.history else None
        return TrainResult(
            self.model,
            self.history,
            self.best,
            final_val,
            ckpt,
            self.global_step,
            self.saved_stretches if self.out_dir else [],
        )

    def _validate(self) -> dict[str, float]:
        return evaluate(self.model, self.data.val, self.device, self.channels_last, task=self.task)

    def _log_line(self, row: dict[str, float]) -> str:
        """The epoch's console line: loss, the task's running metric, validation primary."""
        name, primary = self.task.train_metric_name, self.task.primary
        pct = "%" if self.task.name == "classification" else ""
        val = row.get(f"val_{primary}")
        val_txt = f" val {primary} {val:.2f}{pct}" if val is not None else ""
        return (
            f"epoch {self.epoch}/{self.config.epochs} loss {row['train_loss']:.4f} "
            f"train {name} {row[f'train_{name}']:.2f}{pct}{val_txt} "
            f"{row['img_per_s']:.0f} img/s lr {row['lr']:.4g}"
        )

    def _train_epoch(self, progress: Progress) -> dict[str, float]:
        cfg, epoch = self.config, self.epoch
        self.sampler.set_epoch(epoch)
        seed = epoch_seed(cfg.seed, epoch, self.dist.rank)
        seed_everything(seed)
        self.train_model.train()
        self._call("on_epoch_start", epoch)
        metric = self.task.train_metric_name
        task = progress.add_task(
            "train", total=self.steps_per_epoch, epoch=epoch + 1, loss=0.0, metric=metric,
            value=0.0, ips=0.0,
        )  # fmt: skip
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, steps, t0 = 0, 0, time.perf_counter()
        batches: Any = self.train_loader
        if cfg.max_steps is not None:  # read no batch past the cap
            batches = itertools.islice(batches, max(0, cfg.max_steps - self.global_step))
        for batch in batches:
            loss, outputs, targets, n = self._step(batch)
            loss_sum += loss.detach().double() * n
            metric_sum += self.task.train_metric(outputs, targets, n)
            seen, steps = seen + n, steps + 1
            if not progress.disable and steps % 5 == 0:
                dt = time.perf_counter() - t0
                progress.update(
                    task,
                    completed=steps,
                    loss=loss.item(),
                    value=metric_sum.item() / max(1, seen),
                    ips=seen / max(dt, 1e-9),
                )
        elapsed = time.perf_counter() - t0
        progress.remove_task(task)
        totals = torch.stack(
            [
                loss_sum,
                metric_sum,
                torch.tensor(float(seen), dtype=torch.float64, device=self.device),
            ]
        )
        totals = all_reduce_sum(totals, self.dist)
        n_all = max(1.0, totals[2].item())
        lr = self.optimizer.param_groups[0]["lr"]
        return {
            "epoch": float(epoch + 1),
            "lr": float(lr),
            "train_loss": totals[0].item() / n_all,
            f"train_{metric}": totals[1].item() / n_all,
            "img_per_s": seen / max(elapsed, 1e-9),
            "time_s": elapsed,
        }

    def _step(self, batch: Any) -> tuple[torch.Tensor, Any, Any, int]:
        """One optimizer step; returns the loss, the outputs, the batch's targets and its size."""
        cfg = self.config
        x, y = self.task.split_batch(batch)
        x, y = move_to(x, self.device), move_to(y, self.device)
        n = self.task.batch_size(x, y)
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = StepContext(inputs=x, targets=y)
        self._call("before_forward", ctx)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            args = self.task.model_args(ctx.inputs, ctx.targets, training=True)
            if self._input_checked:
                ctx.outputs = self.train_model(*args)
            else:  # first step: a wrong-shaped input becomes a clear InputShapeError
                size = tuple(x.shape) if isinstance(x, torch.Tensor) else ()
                ctx.outputs = guarded_forward(self.train_model, args[0] if len(args) == 1
                                              else args, size)  # fmt: skip
                self._input_checked = True
            ctx.losses["task"] = self.task.loss(ctx.outputs, ctx.targets)
            self._call("on_loss", ctx)
        loss = sum(ctx.losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.global_step} (epoch {self.epoch + 1}); "
                f"terms: { {k: float(v) for k, v in ctx.losses.items()} }. Lower lr or check data."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.dist.enabled:
            self._sync_hook_grads()
        self._call("before_optimizer_step")
        if cfg.clip_grad:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        self.optimizer.step()
        self.global_step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.global_step)
        self._call("after_optimizer_step")
        return loss, ctx.outputs, ctx.targets, n  # a hook may have replaced the targets

    def _sync_hook_grads(self) -> None:
        # Hook parameters live outside the DDP wrapper: average their gradients by hand.
        for p in self._hook_params():
            if p.grad is not None:
                all_reduce_sum(p.grad, self.dist)
                p.grad /= self.dist.world_size


def _scaled_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Parameter groups with per-module learning-rate scales (longest name prefix wins).

    Biases, 1-d parameters and the model's ``no_weight_decay()`` names get no weight decay,
    as in timm's default groups.
    """
    scales = dict(cfg.lr_scales or {})
    names = {n for n, _ in model.named_modules()}
    unknown = sorted(k for k in scales if k not in names)
    if unknown:
        raise ConfigError(f"lr_scales names module(s) the model does not have: {unknown}")
    nwd = getattr(model, "no_weight_decay", None)
    skip = set(nwd()) if callable(nwd) else set()
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        hits = [k for k in scales if name == k or name.startswith(k + ".")]
        scale = scales[max(hits, key=len)] if hits else 1.0
        decay = p.ndim > 1 and not name.endswith(".bias") and name not in skip
        groups.setdefault((scale, decay), []).append(p)
    return [
        {
            "params": ps,
            "lr": cfg.lr * scale,  # the scheduler scales each group from its own initial lr
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (scale, decay), ps in groups.items()
    ]


def train(
    model: nn.Module,
    data: Any,
    *,
    hooks: list[Hook] | None = None,
    task: Task | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Train ``model`` on ``data`` with the one trainer.

    Args:
        model: the model to train (trained in place).
        data: a :class:`leanvision.data.DataBundle`.
        hooks: method hooks (KD, adder learning rate, ...).
        task: what is trained and measured (:class:`leanvision.tasks.Task`); default: the
            data bundle's ``task``, else classification.
        **kwargs: :class:`TrainConfig` fields (``epochs``, ``lr``, ``out_dir``, ``resume``, ...).
    """
    config = TrainConfig.from_kwargs(**kwargs)
    return Trainer(model, data, config, hooks, task=task).fit()
