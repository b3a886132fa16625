"""Architecture search on CIFAR-10 (the mbv2_cifar space): HourNAS against a joint one-shot
search and random search at one MACs budget, and DC-NAS's ranking against plain one-shot's.

    python benchmarks/search_cifar10.py search --method hournas
    python benchmarks/search_cifar10.py search --method oneshot
    python benchmarks/search_cifar10.py search --method random     # until its CPU-hours reach
                                                                    # HourNAS's (equal budget)
    python benchmarks/search_cifar10.py retrain --method hournas   # each found model, from
    python benchmarks/search_cifar10.py retrain --method oneshot   # scratch, one schedule
    python benchmarks/search_cifar10.py retrain --method random
    python benchmarks/search_cifar10.py rank      # DC-NAS: 20 members scored two ways + alone
    python benchmarks/search_cifar10.py search --method vit_resnas   # the vit_res_cifar space
    python benchmarks/search_cifar10.py retrain --method vit_resnas  # at <= the hand design's
    python benchmarks/search_cifar10.py retrain --method vit_hand    # MACs, same schedule
    python benchmarks/search_cifar10.py report    # -> benchmarks/results/search_cifar10/

HourNAS's claim (CVPR 2021): searching the vital blocks first finds, at a given search cost, a
model at least as accurate as a joint search. The one-shot search trains its supernet as long
as HourNAS's two supernet stretches together and scores as many members; random search trains
candidates alone (``standalone``, random sampler) until it has spent HourNAS's CPU-hours. Every
found model is then trained from scratch with the same schedule (``RETRAIN``) and tested on the
10k test images. DC-NAS's claim: ranking members with per-cluster weights agrees better with
their stand-alone ranking than plain weight sharing does; ``rank`` scores ``RANK_MEMBERS``
members both ways and trains each alone (``ALONE``), and the report gives Kendall's tau of
both rankings against the stand-alone one, with a bootstrap spread over the members.
ViT-ResNAS's claim: its search finds a multi-stage ViT more accurate than the hand design
ViT-Res-Tiny at <= its MACs; here the hand design is ViT-Res-Tiny's pattern at half its widths
(``VIT_HAND``, CPU-sized), the budget is its MACs, and both are retrained with ``VIT_RETRAIN``.
The report times every found model and the hand design side by side in one process.

Searches, supernets and trainings resume from ``runs/bench_search/`` (every search's study is
in its folder's ``search.db``). Each finished stage writes one *part*,
``benchmarks/results/search_cifar10/parts/<stage>.json`` (a search's find and cost, a retrained
model's test top-1, the DC-NAS members' scores, one member trained alone), and parts are
committed: a stage whose part exists is not run again, the stages after it read it, and
``report`` builds the tables from the parts there are, naming the stages still to run. So the
stages can run in different sessions, on different machines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.engine import training_note, training_record
from leanvision.fileio import atomic_write_text
from leanvision.pipeline import cpu_info
from leanvision.profiling import count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "bench_search"
OUT = ROOT / "benchmarks" / "results" / "search_cifar10"
SMOKE = False  # tests set it: a few steps everywhere

SPACE = "mbv2_cifar"
BUDGET = 30e6  # MACs of one 32x32 image
VIT_SPACE = "vit_res_cifar"
# ViT-Res-Tiny's pattern (4 blocks a stage, MLP ratio 4, widths doubling, 64-dim heads filling
# the width) at half its widths, 96/192/384 (stage 0 rounds its 1.5 heads up to 2)
VIT_HAND = {"s0_width": 96, "s1_width": 192, "s2_width": 384} | {
    f"s{s}_b{b}": f"h{h}m4" for s, h in enumerate((2, 3, 6)) for b in range(4)}  # fmt: skip
VIT_RETRAIN = {"epochs": 10, "max_train": 45000, "lr": 5e-4, "weight_decay": 0.05,
               "opt": "adamw"}  # fmt: skip
SEARCH_DATA = {"max_train": 10000, "max_val": 2000}
SUPERNET = {"lr": 0.05, "weight_decay": 4e-5, "bn_batches": 4}
METHODS: dict[str, dict[str, Any]] = {
    "hournas": {"method": "hournas", "vital_epochs": 6, "rest_epochs": 3, "vital_trials": 30,
                "n_trials": 30, **SUPERNET},
    "oneshot": {"method": "oneshot", "supernet_epochs": 9, "n_trials": 60, **SUPERNET},
    "random": {"method": "standalone", "sampler": "random", "epochs": 1, "lr": 0.05},
    # the official supernet recipe (AdamW 5e-4, wd 0.05, 2 members a batch), CPU-sized
    "vit_resnas": {"method": "vit_resnas", "space": VIT_SPACE, "supernet_epochs": 10,
                   "n_trials": 60, "population": 20, "bn_batches": 4},
}  # fmt: skip
RETRAINED = [*METHODS, "vit_hand"]  # what `retrain` trains: each search's find, the hand ViT
RETRAIN = {"epochs": 10, "max_train": 45000, "lr": 0.05, "weight_decay": 4e-5}
RANK_MEMBERS, ALONE = 20, {"epochs": 3, "max_train": 10000, "lr": 0.05}
DESCRIPTION = (
    "HourNAS's claim (CVPR 2021): searching the vital blocks first finds, at a given search "
    "cost, a model at least as accurate as a joint search. The joint one-shot search trains its "
    "supernet as long as HourNAS's two supernet stretches together and scores as many members; "
    "random search trains candidates alone until it has spent HourNAS's CPU-hours. Every found "
    "model is trained from scratch with one schedule and tested on the 10k test images. "
    "DC-NAS's claim: ranking members with per-cluster weights agrees better with their "
    "stand-alone ranking than plain weight sharing does (Kendall's tau, bootstrap spread). "
    "ViT-ResNAS's claim: its search (multi-stage ViT supernet, several members per batch, "
    "NSGA-II under a MACs budget) finds a ViT more accurate than the hand design at <= its MACs; "
    "here the hand design is ViT-Res-Tiny's pattern at half its widths and the budget its MACs. "
    "Latencies: every model timed side by side in one process, batch 1."
)
COMMAND = " && ".join(
    [f"python benchmarks/search_cifar10.py search --method {m}" for m in ("hournas", "oneshot",
     "random", "vit_resnas")] + [f"python benchmarks/search_cifar10.py retrain --method {m}"
     for m in ("hournas", "oneshot", "random", "vit_resnas", "vit_hand")]
    + ["python benchmarks/search_cifar10.py rank", "python benchmarks/search_cifar10.py report"]
)  # fmt: skip
RANK = {"method": "dcnas", "supernet_epochs": 9, "n_clusters": 4, "cluster_epochs": 1,
        **SUPERNET}  # fmt: skip


def _data(args: argparse.Namespace, **limits: Any) -> Any:
    if SMOKE:
        limits = {"max_train": 64, "max_val": 32, "max_test": 32}
    return lv.load_data("cifar10", root=args.data, batch_size=128, seed=0, **limits)


def _smoke(hp: dict[str, Any]) -> dict[str, Any]:
    if not SMOKE:
        return hp
    small = {k: 1 for k in ("vital_epochs", "rest_epochs", "supernet_epochs", "epochs")}
    small.update(vital_trials=2, n_trials=2, n_clusters=2, bn_batches=1, population=2)
    return {**hp, **{k: v for k, v in small.items() if k in hp}, "max_steps": 2}


def vit_hand() -> dict[str, Any]:
    """The hand-designed ViT's sample; smoke runs take ViT-Res-Tiny at 2/3 width (186 M MACs,
    about half the space's random members fit under it, against ~5 % under VIT_HAND's)."""
    if not SMOKE:
        return VIT_HAND
    return {"s0_width": 128, "s1_width": 256, "s2_width": 512} | {
        f"s{s}_b{b}": f"h{h}m4" for s, h in enumerate((2, 4, 8)) for b in range(4)}  # fmt: skip


def vit_budget() -> int:
    """The ViT search's MACs budget: the hand design's MACs (counted, not typed)."""
    from leanvision.search import get_space
    from leanvision.search.verb import spec_macs

    return spec_macs(get_space(VIT_SPACE).spec(vit_hand()), (3, 32, 32), num_classes=10)


def _search(method: str, data: Any, n_trials: int | None = None) -> Any:
    hp = _smoke(dict(METHODS[method]))
    name, trials = hp.pop("method"), n_trials or hp.pop("n_trials", 1)
    hp.pop("n_trials", None)
    space = hp.pop("space", SPACE)
    budget = vit_budget() if space == VIT_SPACE else BUDGET
    return lv.search(
        space, data, name, budget=budget, n_trials=trials, out_dir=RUNS / method,
        progress=sys.stderr.isatty(), **hp,
    )  # fmt: skip


def parts_dir() -> Path:
    """The committed stage results (see the module docstring)."""
    return OUT / "parts"


def read_part(name: str) -> dict[str, Any] | None:
    """A stage's part, or None where the stage has not run."""
    path = parts_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _need_part(name: str, command: str) -> dict[str, Any]:
    part = read_part(name)
    if part is None:
        raise SystemExit(f"no part {name}.json in {parts_dir()}: run `{command}` first")
    return part


def _write_part(name: str, summary: dict[str, Any]) -> Path:
    text = json.dumps(summary, indent=1, default=str) + "\n"
    return atomic_write_text(parts_dir() / f"{name}.json", text)


def cmd_search(args: argparse.Namespace) -> None:
    if read_part(f"search_{args.method}") is not None:
        print(f"{args.method}: searched already ({parts_dir() / f'search_{args.method}.json'})")
        return
    torch.set_num_threads(args.threads)
    if args.method == "random":  # equal budget: as many CPU-hours as HourNAS's search
        target = _need_part("search_hournas", "search --method hournas")["cpu_hours"]
    data = _data(args, **SEARCH_DATA)
    if args.method == "random":
        n = 1
        while True:
            result = _search("random", data, n_trials=n)
            if result.cpu_hours >= target or (SMOKE and n >= 2):
                break
            n += 1
    else:
        result = _search(args.method, data)
    best = result.best
    _write_part(f"search_{args.method}", {
        "method": args.method, "settings": _smoke(METHODS[args.method]),
        "cpu_hours": result.cpu_hours, "gpu_hours": result.gpu_hours,
        "trials": len(result.candidates),
        "distinct": result.distinct(), "best": {"number": best.number, "values": best.values,
        "spec": best.spec.as_dict(), "sample": best.sample},
        "pareto": [c.number for c in result.pareto], "threads": args.threads,
        "git": dataclasses.asdict(git_state()),
    })  # fmt: skip
    print(f"{args.method}: {len(result.candidates)} trials, {result.cpu_hours:.2f} CPU-h, "
          f"best {best.values}")  # fmt: skip


def _train_alone(
    spec: dict[str, Any], out: Path, data: Any, hp: dict[str, Any], threads: int, part: str
) -> dict[str, Any]:
    """Train one spec from scratch (resumes) unless its part exists; the part: its test top-1
    and how it trained."""
    done = read_part(part)
    if done is not None:
        return done
    torch.manual_seed(0)
    model = lv.create_model(spec["name"], **spec["kwargs"], num_classes=data.num_classes)
    res = lv.train(
        model, data, epochs=hp["epochs"], lr=hp["lr"], weight_decay=hp.get("weight_decay", 5e-4),
        opt=hp.get("opt", "sgd"), seed=0, out_dir=str(out), resume=True, num_threads=threads,
        progress=sys.stderr.isatty(), max_steps=2 if SMOKE else None,
    )  # fmt: skip
    summary = {
        "spec": spec, "test_top1": lv.evaluate(res.model, data.loader("test"))["top1"],
        "macs": int(count_ops(model.eval(), (3, 32, 32)).macs),
        "params": sum(p.numel() for p in model.parameters()), "schedule": hp,
        "threads": threads, "how": training_note(training_record(out / "last.pt"), threads),
        "git": dataclasses.asdict(git_state()),
    }  # fmt: skip
    _write_part(part, summary)
    return summary


def cmd_retrain(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.method == "vit_hand":
        from leanvision.search import get_space

        spec = get_space(VIT_SPACE).spec(vit_hand()).as_dict()
    else:
        found = _need_part(f"search_{args.method}", f"search --method {args.method}")
        spec = found["best"]["spec"]
    hp = VIT_RETRAIN if args.method.startswith("vit") else RETRAIN
    data = _data(args, max_train=hp["max_train"])
    part = f"retrain_{args.method}"
    s = _train_alone(spec, RUNS / args.method / "retrain", data, hp, args.threads, part)
    print(f"{args.method}: retrained test top-1 {s['test_top1']:.2f} % at {s['macs'] / 1e6:.1f} M")


def cmd_rank(args: argparse.Namespace) -> None:
    """DC-NAS's scores of ``RANK_MEMBERS`` members (one part), then each member trained alone
    (a part each: the stage resumes member by member)."""
    torch.set_num_threads(args.threads)
    ranked = read_part("rank_search")
    if ranked is None:
        hp = _smoke(dict(RANK))
        hp.pop("method")
        result = lv.search(
            SPACE, _data(args, **SEARCH_DATA), "dcnas", budget=BUDGET,
            n_trials=4 if SMOKE else RANK_MEMBERS, out_dir=RUNS / "rank",
            progress=sys.stderr.isatty(), **hp,
        )  # fmt: skip
        members = [
            {"number": c.number, "cluster": c.metrics["cluster"], "dcnas": c.values["val_top1"],
             "oneshot": c.metrics["oneshot_val_top1"], "macs": c.values["macs"],
             "spec": c.spec.as_dict()}
            for c in sorted(result.candidates, key=lambda c: c.number)
        ]  # fmt: skip
        ranked = {"members": members, "cpu_hours": result.cpu_hours, "settings": hp,
                  "threads": args.threads, "git": dataclasses.asdict(git_state())}  # fmt: skip
        _write_part("rank_search", ranked)
    alone_data = _data(args, max_train=ALONE["max_train"])
    for m in ranked["members"]:
        s = _train_alone(m["spec"], RUNS / "rank" / "alone" / str(m["number"]), alone_data,
                         ALONE, args.threads, f"rank_alone_{m['number']}")  # fmt: skip
        print(f"member {m['number']}: alone {s['test_top1']:.2f} %, DC-NAS {m['dcnas']:.2f}, "
              f"one-shot {m['oneshot']:.2f}")  # fmt: skip


def rank_members() -> tuple[list[dict[str, Any]], int]:
    """The DC-NAS members with their stand-alone top-1 (those trained alone so far) and the
    number of members scored."""
    ranked = read_part("rank_search")
    if ranked is None:
        return [], 0
    rows = []
    for m in ranked["members"]:
        alone = read_part(f"rank_alone_{m['number']}")
        if alone is not None:
            rows.append({k: v for k, v in m.items() if k != "spec"} | {"alone": alone["test_top1"]})
    return rows, len(ranked["members"])


def kendall_with_spread(x: list[float], y: list[float], reps: int = 1000) -> tuple[float, float]:
    """Kendall's tau (scipy) and the standard deviation of its bootstrap over the members."""
    from scipy.stats import kendalltau

    tau = float(kendalltau(x, y).statistic)
    rng, taus = random.Random(0), []
    for _ in range(reps):
        idx = [rng.randrange(len(x)) for _ in x]
        t = kendalltau([x[i] for i in idx], [y[i] for i in idx]).statistic
        if t == t:  # not NaN (a resample of ties)
            taus.append(float(t))
    mean = sum(taus) / len(taus)
    return tau, (sum((t - mean) ** 2 for t in taus) / max(1, len(taus) - 1)) ** 0.5


def still_to_run() -> list[str]:
    """The commands of the stages without a part, in the order they run."""
    todo = []
    for method in RETRAINED:
        if method != "vit_hand" and read_part(f"search_{method}") is None:
            todo.append(f"search --method {method}")
        if read_part(f"retrain_{method}") is None:
            todo.append(f"retrain --method {method}")
    members, scored = rank_members()
    if not scored or len(members) < scored:
        todo.append(f"rank ({len(members)} of {scored or RANK_MEMBERS} members trained alone)")
    return todo


def cmd_report(args: argparse.Namespace) -> None:
    """The tables from the parts there are; a claim is judged once all its stages have run."""
    check_results_target(OUT, allow_dirty=args.allow_dirty)
    rows, table, vit_table, notes = [], [], [], []
    for method in RETRAINED:
        r, s = read_part(f"retrain_{method}"), read_part(f"search_{method}")
        if r is None:
            continue
        if method == "vit_hand":
            rows.append({
                "name": "vit_hand", "dataset": "cifar10", "split": "test", "top1": r["test_top1"],
                "params": r["params"], "macs": r["macs"], "seed": 0, "method_chain": [],
                "notes": f"ViT-Res-Tiny's pattern at half width; trained {r['how']}",
                "extra": {"spec": r["spec"]},
            })  # fmt: skip
            vit_table.append(["hand design (ViT-Res-Tiny at half width)", "", "",
                              round(r["macs"] / 1e6, 2), round(r["test_top1"], 2)])  # fmt: skip
            continue
        rows.append({
            "name": f"{method}_found", "dataset": "cifar10", "split": "test",
            "top1": r["test_top1"], "params": r["params"], "macs": r["macs"], "seed": 0,
            "method_chain": [f"search:{method}"],
            **({"baseline": "vit_hand"} if method == "vit_resnas" else {}),
            "notes": f"search {s['cpu_hours']:.2f} CPU-h"
                     + (f" and {s['gpu_hours']:.2f} GPU-h" if s.get("gpu_hours") else "")
                     + f", {s['trials']} trials (searched at "
                     f"{str(s['git']['commit'])[:10]}); retrained {r['how']}",
            "extra": {"spec": s["best"]["spec"], "search": s},
        })  # fmt: skip
        line = [method, round(s["cpu_hours"], 2), s["trials"], round(r["macs"] / 1e6, 2),
                round(r["test_top1"], 2)]  # fmt: skip
        (vit_table if method == "vit_resnas" else table).append(line)
    todo = still_to_run()
    if not rows:
        raise SystemExit(
            "no model retrained yet: run `search --method hournas` and `retrain --method hournas` "
            f"first (still to run: {'; '.join(todo)})"
        )
    _time_side_by_side(rows, args.threads)
    by = {t[0]: t for t in table}
    if len(by) == 3:
        verdict = all(by["hournas"][-1] >= by[m][-1] for m in ("oneshot", "random"))
        notes.append(
            f"HourNAS {by['hournas'][-1]:.2f} % vs joint one-shot {by['oneshot'][-1]:.2f} % and "
            f"random {by['random'][-1]:.2f} % at <= {BUDGET / 1e6:g} M MACs: the claim "
            + ("holds" if verdict else "does not hold")
            + " here. Search CPU-hours: "
            + ", ".join(f"{t[0]} {t[1]}" for t in table)
            + "."
        )
    if len(vit_table) == 2:
        vit, hand = vit_table
        notes.append(
            f"ViT-ResNAS's search {vit[-1]:.2f} % at {vit[3]:g} M MACs vs the hand design "
            f"{hand[-1]:.2f} % at {hand[3]:g} M MACs (the budget): the claim "
            + ("holds" if vit[-1] > hand[-1] and vit[3] <= hand[3] else "does not hold")
            + " here."
        )
    columns = ["search", "search CPU-h", "trials", "MMACs", "test top-1 %"]
    tables = [
        {"title": "Found models, retrained from scratch", "columns": columns, "rows": table},
        {"title": "ViT-ResNAS (vit_res_cifar) against the hand design, same retraining",
         "columns": columns, "rows": vit_table},
    ]  # fmt: skip
    members, scored = rank_members()
    if scored and len(members) == scored:
        alone = [m["alone"] for m in members]
        t_dc = kendall_with_spread([m["dcnas"] for m in members], alone)
        t_os = kendall_with_spread([m["oneshot"] for m in members], alone)
        tables.append({"title": f"Ranking of {len(members)} members against stand-alone training",
                       "columns": ["scorer", "Kendall tau", "bootstrap sd"],
                       "rows": [["DC-NAS (per-cluster weights)", round(t_dc[0], 3),
                                 round(t_dc[1], 3)],
                                ["one-shot (shared weights)", round(t_os[0], 3),
                                 round(t_os[1], 3)]]})  # fmt: skip
        notes.append(
            f"DC-NAS tau {t_dc[0]:.3f} (sd {t_dc[1]:.3f}) vs one-shot {t_os[0]:.3f} "
            f"(sd {t_os[1]:.3f}): DC-NAS's ranking is "
            + ("closer to" if t_dc[0] > t_os[0] else "not closer to")
            + " the stand-alone one here."
        )
    if todo:
        notes.append("Stages still to run (their claims are not judged yet): " + "; ".join(todo)
                     + ".")  # fmt: skip
    run = {
        "name": "Architecture search on CIFAR-10 (mbv2_cifar, vit_res_cifar)",
        "description": DESCRIPTION, "command": COMMAND,
        "cpu": cpu_info(), "tables": [t for t in tables if t["rows"]], "notes": notes,
    }  # fmt: skip
    print(f"wrote {write_results(OUT, rows, run_info=run, allow_dirty=args.allow_dirty)}")


def _time_side_by_side(rows: list[dict[str, Any]], threads: int) -> None:
    """Every row's model (random weights: latency does not depend on them), timed together in
    this process at batch 1; its ``latency_ms`` set."""
    from leanvision.profiling import compare

    models = {
        r["name"]: lv.create_model(r["extra"]["spec"]["name"], **r["extra"]["spec"]["kwargs"],
                                   num_classes=10).eval()
        for r in rows
    }  # fmt: skip
    timed = compare(models, (3, 32, 32), batch=1, threads=threads, warmup=3,
                    repeats=5 if SMOKE else 50)  # fmt: skip
    for r in rows:
        r["latency_ms"] = timed[r["name"]].as_result()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("search")
    s.add_argument("--method", choices=list(METHODS), required=True)
    r = sub.add_parser("retrain")
    r.add_argument("--method", choices=RETRAINED, required=True)
    sub.add_parser("rank")
    sub.add_parser("report")
    args = p.parse_args(argv)
    commands = {"search": cmd_search, "retrain": cmd_retrain, "rank": cmd_rank}
    commands["report"] = cmd_report
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
