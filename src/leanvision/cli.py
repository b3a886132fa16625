"""``leanvision <command>``: quickstart, train, compress, search, fed, eval, profile, list,
report."""

from __future__ import annotations

import argparse
import shlex
import sys

from leanvision.errors import CheckpointError, LeanVisionError


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="mnist5k", help="dataset name (mnist5k, cifar10, imagefolder)")
    p.add_argument("--data-dir", default=None, help="dataset root folder (cifar10, imagefolder)")
    p.add_argument("--batch-size", type=int, default=None, help="default: lv.load_data's")


def _given(**options: object) -> dict[str, object]:
    """The options given on the command line: an option left out keeps the library's default
    (the CLI repeats none of them)."""
    return {k: v for k, v in options.items() if v is not None}


def _add_input_size_args(p: argparse.ArgumentParser, batch_help: str) -> None:
    p.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        default=None,
        metavar=("C", "H", "W"),
        help="one image's shape without the batch (default: the model's own, its "
        "pretrained_cfg input_size); the batch is --batch",
    )
    p.add_argument("--batch", type=int, default=1, metavar="N", help=batch_help)


def _recipe_or_args(args: argparse.Namespace, stages: list[dict] | None):
    from leanvision.recipe import load_recipe, recipe_from_dict

    if args.recipe:
        return load_recipe(args.recipe, args.set)
    if not args.model:
        raise LeanVisionError("give --recipe FILE, or --model NAME (with --data/--epochs/...)")
    raw = {
        "name": args.name or args.model,
        "data": _given(name=args.data, root=args.data_dir, batch_size=args.batch_size),
        "model": {"name": args.model},
        "train": _given(epochs=args.epochs, lr=args.lr),
        "stages": stages or [],
    }
    from leanvision.recipe import _apply_override

    for item in args.set or []:
        _apply_override(raw, item)
    return recipe_from_dict(raw)


def cmd_quickstart(args: argparse.Namespace) -> None:
    from leanvision.quickstart import run_quickstart

    run_quickstart(
        args.out, epochs=args.epochs, threads=args.threads, seed=args.seed, max_steps=args.max_steps
    )


def cmd_train(args: argparse.Namespace) -> None:
    from leanvision.runner import run_recipe

    recipe = _recipe_or_args(args, None)
    recipe.stages = [] if not args.recipe else recipe.stages
    out = run_recipe(recipe, args.out, command=" ".join(map(shlex.quote, sys.argv)))
    print(f"results: {out / 'results.json'}\nreport: {out / 'report.html'}")


def cmd_compress(args: argparse.Namespace) -> None:
    from leanvision.runner import run_recipe

    stages = [{"method": args.method}] if args.method else None
    recipe = _recipe_or_args(args, stages)
    out = run_recipe(recipe, args.out, command=" ".join(map(shlex.quote, sys.argv)))
    print(f"results: {out / 'results.json'}\nreport: {out / 'report.html'}")


def _search_settings(args: argparse.Namespace) -> dict:
    """The search's settings: the recipe's (if any), then the flags given, then ``--set``."""
    from leanvision.recipe import SEARCH_RECIPE_KEYS, _apply_override, load_search_recipe

    raw: dict = {"data": {}, "hparams": {}}
    if args.recipe:
        raw.update(load_search_recipe(args.recipe))
    raw["data"] = {**raw.get("data", {}), **_given(
        name=args.data, root=args.data_dir, batch_size=args.batch_size,
        max_train=args.max_train, max_val=args.max_val,
    )}  # fmt: skip
    raw.update(_given(
        space=args.space, method=args.method, n_trials=args.n_trials, budget=args.budget,
        storage=args.storage, study=args.study, out=args.out,
    ))  # fmt: skip
    for item in args.set or []:  # a recipe key (n_trials, data.max_train) or a method option
        top = item.split("=", 1)[0].split(".", 1)[0]
        _apply_override(raw, item if top in SEARCH_RECIPE_KEYS else f"hparams.{item}")
    if not raw.get("space"):
        raise LeanVisionError("give a SPACE (see `leanvision list spaces`) or a --recipe with one")
    return raw


def cmd_search(args: argparse.Namespace) -> None:
    import leanvision as lv

    cfg = _search_settings(args)
    data_args = dict(cfg["data"])
    data = lv.load_data(data_args.pop("name", "mnist5k"), **data_args)
    out = cfg.get("out") or f"runs/search/{cfg['space']}"
    result = lv.search(
        cfg["space"], data, cfg.get("method", "standalone"), budget=cfg.get("budget"),
        storage=cfg.get("storage"), study=cfg.get("study"), n_trials=cfg.get("n_trials", 20),
        out_dir=out, progress=sys.stderr.isatty(), **cfg["hparams"],
    )  # fmt: skip
    from leanvision.search.results import write_search_results

    path = write_search_results(result, data, out, command=" ".join(map(shlex.quote, sys.argv)))
    best = result.best
    values = ", ".join(f"{k} {v:g}" for k, v in best.values.items())
    print(
        f"study {result.study.study_name}: {len(result.candidates)} completed trials "
        f"({result.distinct()} architectures), {result.cost()}\n"
        f"best: trial {best.number}: {values}\n"
        f"spec: {best.spec.as_dict()}\n"
        f"Pareto front: trials {[c.number for c in result.pareto]} (timed side by side)\n"
        f"results: {path}\nreport: {path.parent / 'report.html'}"
    )


def cmd_fed(args: argparse.Namespace) -> None:
    """A federation's server or one of its clients, as a real process (Flower over gRPC)."""
    from pathlib import Path

    import torch

    import leanvision as lv
    from leanvision.methods.federated.processes import run_client, run_server
    from leanvision.recipe import _apply_override

    hparams: dict = {}
    for item in args.set or []:
        _apply_override(hparams, item)
    data = lv.load_data(args.data, **_given(
        root=args.data_dir, batch_size=args.batch_size, max_train=args.max_train,
        max_val=args.max_val, seed=args.seed,
    ))  # fmt: skip
    torch.manual_seed(args.seed)  # the server's initial model is the one sent to the clients
    model = lv.create_model(args.model, num_classes=data.num_classes, in_chans=data.input_size[0])
    if args.role == "client":
        run_client(args.method, model, data, args.client_id, args.address,
                   timeout_s=args.timeout, seed=args.seed, log=False, **hparams)  # fmt: skip
        print(f"client {args.client_id}: the server ended the federation")
        return
    out = Path(args.out)
    model = run_server(args.method, model, data, args.address, out_dir=str(out),
                       resume=args.resume, seed=args.seed, **hparams)  # fmt: skip
    lv.save(model, out / "model.pt")
    last = model.lv_federation["history"][-1]
    print(
        f"{args.method}: {last['round']} rounds, val top-1 {last['val_top1']:.2f} %; "
        f"global model: {out / 'model.pt'}, history: {out / 'history.json'}"
    )


def cmd_eval(args: argparse.Namespace) -> None:
    import leanvision as lv
    from leanvision.engine import load_checkpoint

    data = lv.load_data(args.data, **_given(root=args.data_dir, batch_size=args.batch_size))
    state = load_checkpoint(args.checkpoint) if args.checkpoint else None
    if state is not None and state.get("kind") == "model":  # written by lv.save: self-describing
        model = lv.load(args.checkpoint)
        name = state["arch"]["spec"]["name"]
    else:
        if not args.model:
            raise LeanVisionError(
                "give --model NAME (the checkpoint holds only weights), or a --checkpoint "
                "written by leanvision.save"
            )
        name = args.model
        model = lv.create_model(name, num_classes=data.num_classes, in_chans=data.input_size[0])
        if state is not None:
            if not isinstance(state.get("model"), dict):
                raise CheckpointError(
                    f"checkpoint {args.checkpoint!r} holds no model weights (keys: "
                    f"{', '.join(map(str, state))}); give a file written by leanvision.save or "
                    "by the trainer (last.pt / best.pt)"
                )
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as exc:  # missing / unexpected keys, size mismatches
                raise CheckpointError(
                    f"checkpoint {args.checkpoint!r} does not fit --model {name}: {exc}"
                ) from exc
    res = lv.evaluate(model, data.loader(args.split))
    print(f"{name} on {args.data}/{args.split}: {_scores_line(res)}")


def _scores_line(res: dict[str, float]) -> str:
    """``lv.evaluate``'s scores in one line: top-1/top-5 for a classifier, the task's metrics
    (PSNR dB, SSIM, ...) for another task, then the loss and the sample count."""
    from leanvision.report.tables import fmt_metric, metric_header
    from leanvision.tasks import task_metrics

    parts = [f"top-{k[-1]} {res[k]:.2f}%" for k in ("top1", "top5") if k in res]
    parts += [f"{metric_header(k)} {fmt_metric(k, v)}" for k, v in task_metrics(res).items()]
    if "loss" in res:
        parts.append(f"loss {res['loss']:.4f}")
    return "  ".join(parts) + f"  (n={res['n']})"


def cmd_profile(args: argparse.Namespace) -> None:
    import leanvision as lv

    kwargs = {}
    if args.input_size is not None:
        kwargs["in_chans"] = args.input_size[0]
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    model = lv.create_model(args.model, **kwargs)
    prof = lv.profile(model, input_size=args.input_size, batch=args.batch, threads=args.threads)
    d = prof.as_dict()
    lat = d.get("latency_ms") or {}
    print(f"{args.model} @ {prof.input_size} batch {args.batch}")
    print(f"  params  {prof.params / 1e6:.3f} M")
    print(
        f"  MACs    {prof.macs / args.batch / 1e6:.2f} M per image, {prof.macs / 1e6:.2f} M per "
        f"batch (multiply-accumulates; FLOPs = 2 x MACs)"
    )
    if lat:
        print(
            f"  latency {lat.get('median'):.3f} ms median, {lat.get('p90'):.3f} ms p90 "
            f"({lat.get('threads')} threads, {lat.get('backend')})"
        )
    if prof.peak_mem_mb is not None:
        print(f"  peak memory {prof.peak_mem_mb:.1f} MiB")
    print(f"  energy  {prof.energy_uj:.1f} uJ (compute only, 45 nm estimate)")


def cmd_export(args: argparse.Namespace) -> None:
    import leanvision as lv

    model = lv.load(args.checkpoint).eval()
    path = lv.export_onnx(model, args.output, input_size=args.input_size, batch=args.batch)
    print(f"wrote {path} (ONNX opset 17; quantized models as QuantizeLinear/DequantizeLinear)")


def cmd_list(args: argparse.Namespace) -> None:
    import leanvision as lv

    if args.what == "models":
        names = lv.list_models(args.pattern or "", include_timm=args.all)
    elif args.what == "methods":
        from leanvision.methods import method_specs

        for spec in method_specs():
            print(f"{spec.name:16s} {spec.family:14s} {spec.paper}")
        return
    elif args.what == "search":
        from leanvision.search import get_search_method, list_search_methods

        for name in list_search_methods():
            print(f"{name:16s} {get_search_method(name).paper}")
        return
    elif args.what == "spaces":
        from leanvision.search import get_space, list_spaces

        for name in list_spaces():
            space = get_space(name)
            print(f"{name:16s} {space.size():9.3g} archs  {space.description}")
        return
    else:
        names = lv.list_datasets()
    print("\n".join(names))


def cmd_report(args: argparse.Namespace) -> None:
    from leanvision.report import build_summary

    out = build_summary(args.inputs, args.output)
    print(f"wrote {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="leanvision",
        description="Make vision networks really smaller and faster, with measured numbers.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="the main job on the embedded data (a few minutes)")
    q.add_argument("--out", default="runs/quickstart")
    q.add_argument("--epochs", type=int, default=5)
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--max-steps", type=int, default=None, help="cap steps per model (smoke run)")
    q.set_defaults(fn=cmd_quickstart)

    for name, fn, helptext in (
        ("train", cmd_train, "train a model (recipe or flags)"),
        ("compress", cmd_compress, "run a recipe's method stages"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--recipe", default=None, help="recipe YAML file")
        s.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a recipe field, e.g. train.epochs=1",
        )
        s.add_argument("--model", default=None)
        s.add_argument("--name", default=None)
        _add_data_args(s)
        s.add_argument(
            "--epochs", type=int, default=None, help="default: the trainer's (TrainConfig)"
        )
        s.add_argument(
            "--lr", type=float, default=None, help="default: the trainer's (TrainConfig)"
        )
        s.add_argument("--out", default=None, help="run folder (default runs/<name>)")
        if name == "compress":
            s.add_argument("--method", default=None, help="method key (see `list methods`)")
        s.set_defaults(fn=fn)

    se = sub.add_parser(
        "search",
        help="architecture search on an Optuna study (several workers may share one --storage)",
    )
    se.add_argument("space", nargs="?", default=None, help="a search space (`list spaces`)")
    se.add_argument("--recipe", default=None, help="search recipe YAML (recipes/search/)")
    se.add_argument("--method", default=None, help="search method (`list search`; standalone)")
    _add_data_args(se)
    se.add_argument("--max-train", type=int, default=None, help="training images per epoch")
    se.add_argument("--max-val", type=int, default=None, help="validation images")
    se.add_argument("--n-trials", type=int, default=None, help="completed trials, all workers")
    se.add_argument("--budget", type=float, default=None, help="most MACs a found model may have")
    se.add_argument(
        "--storage",
        default=None,
        help="Optuna RDB URL (sqlite:///x.db, postgresql://...) or a journal file; "
        "default: <out>/search.db",
    )
    se.add_argument("--study", default=None, help="study name (an existing study resumes)")
    se.add_argument("--out", default=None, help="run folder (default runs/search/<space>)")
    se.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a method hyper-parameter, e.g. sampler=nsga2 or max_steps=20",
    )  # fmt: skip
    se.set_defaults(fn=cmd_search, data=None)  # a recipe's data unless --data is given

    fed = sub.add_parser("fed", help="a federation's server or client process (Flower)")
    roles = fed.add_subparsers(dest="role", required=True)
    for role, helptext in (
        ("server", "serve a federation until its rounds are done; saves the global model"),
        ("client", "be client --client-id of the federation at --address"),
    ):
        f = roles.add_parser(role, help=helptext)
        f.add_argument("--method", default="fedpu", help="fedpu or fedavg")
        f.add_argument("--model", required=True, help="the architecture every process builds")
        _add_data_args(f)
        f.add_argument("--max-train", type=int, default=None, help="training images dealt")
        f.add_argument("--max-val", type=int, default=None, help="validation images (server)")
        f.add_argument("--address", default="127.0.0.1:8080", help="the server's HOST:PORT")
        f.add_argument("--seed", type=int, default=0, help="the same in every process")
        f.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE",
            help="a method option, the same in every process, e.g. num_clients=2 rounds=3",
        )  # fmt: skip
        if role == "server":
            f.add_argument("--out", default="runs/fed", help="global model and history")
            f.add_argument("--resume", action="store_true", help="continue from --out")
        else:
            f.add_argument("--client-id", type=int, required=True)
            f.add_argument("--timeout", type=float, default=30.0, help="s to reach the server")
        f.set_defaults(fn=cmd_fed)

    e = sub.add_parser("eval", help="evaluate a model (optionally from a checkpoint)")
    e.add_argument("--model", default=None, help="needed unless --checkpoint is a saved model")
    e.add_argument("--checkpoint", default=None)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    _add_data_args(e)
    e.set_defaults(fn=cmd_eval)

    pr = sub.add_parser("profile", help="params, MACs, latency, memory and energy of a model")
    pr.add_argument("model")
    _add_input_size_args(pr, "samples per forward; MACs, latency and memory are the batch's")
    pr.add_argument("--threads", type=int, default=None)
    pr.add_argument("--num-classes", type=int, default=None)
    pr.set_defaults(fn=cmd_profile)

    ex = sub.add_parser("export", help="write a saved model (leanvision.save) as ONNX")
    ex.add_argument("checkpoint", help="a model written by leanvision.save (e.g. a run's models/)")
    ex.add_argument("output", help="the .onnx file to write")
    _add_input_size_args(ex, "batch of the example input (the exported batch is dynamic)")
    ex.set_defaults(fn=cmd_export)

    ls = sub.add_parser("list", help="list models, methods, search methods, spaces or datasets")
    ls.add_argument("what", choices=["models", "methods", "search", "spaces", "datasets"])
    ls.add_argument("pattern", nargs="?", default=None)
    ls.add_argument("--all", action="store_true", help="models: include all of timm's")
    ls.set_defaults(fn=cmd_list)

    r = sub.add_parser("report", help="build one markdown summary from results files")
    r.add_argument("inputs", nargs="+", help="run folders, results.json files or folders of them")
    r.add_argument("-o", "--output", default="docs/RESULTS.md")
    r.set_defaults(fn=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leanvision`` console script."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except LeanVisionError as e:
        print(f"leanvision {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
