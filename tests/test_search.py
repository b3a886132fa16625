"""lv.search: spaces checked at the door, Optuna studies shared by worker processes, a killed
worker's trial re-run, and a stand-alone search end to end on the embedded data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import leanvision as lv
from leanvision.errors import ConfigError, UnknownNameError
from leanvision.search import (
    Choice,
    ModelSpec,
    Objective,
    SearchSpace,
    get_space,
    make_sampler,
    open_storage,
    open_study,
    run_study,
)

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from search_worker import run_worker, toy_space  # noqa: E402

# -- spaces ---------------------------------------------------------------------------------------


def test_space_checks_every_sample_at_the_door():
    space = toy_space()
    assert space.size() == 36 and len(list(space)) == 36
    assert space.check({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with pytest.raises(ConfigError, match=r"no choice\(s\) \['c'\].*\['a', 'b'\]"):
        space.check({"a": 1, "b": 2, "c": 0})
    with pytest.raises(ConfigError, match=r"lacks \['b'\]"):
        space.check({"a": 1})
    with pytest.raises(ConfigError, match=r"a=7 is not allowed; allowed: \[0, 1, 2, 3, 4, 5\]"):
        space.check({"a": 7, "b": 0})
    with pytest.raises(ConfigError, match="a=True is not allowed"):
        space.check({"a": True, "b": 0})  # a bool is not the int 1
    with pytest.raises(ConfigError, match="options must be"):
        Choice("k", ((3, 3), (5, 5)))
    with pytest.raises(ConfigError, match="twice"):
        SearchSpace("x", [Choice("a", (1,)), Choice("a", (2,))], lambda s: ModelSpec("m"))
    # the fingerprint follows the choices, not the object
    assert toy_space().fingerprint() == space.fingerprint()
    assert toy_space("other").fingerprint() != space.fingerprint()


def test_mbv2_cifar_space_builds_what_create_model_builds():
    space = get_space("mbv2_cifar")
    assert space.size() > 1e9
    small, big = space.spec(space.smallest), space.spec({k: c.options[-1] if k.endswith(
        "width") else "k7e6" for k, c in space.choices.items()})  # fmt: skip
    m_small, m_big = small.build(num_classes=10), big.build(num_classes=10)
    macs = [lv.profile(m).macs for m in (m_small, m_big)]
    assert macs[0] < macs[1] / 4
    # the default mbnas_cifar is the space's largest member
    assert lv.profile(lv.create_model("mbnas_cifar", num_classes=10)).macs == macs[1]
    # a spec round-trips through lv.create_model and lv.save/lv.load
    assert m_small.lv_spec == {"name": "mbnas_cifar", "kwargs": {**small.kwargs, "num_classes": 10}}
    with pytest.raises(ConfigError, match="not a timm block string"):
        lv.create_model("mbnas_cifar", arch=[["conv3x3"]])
    with pytest.raises(UnknownNameError, match="search space"):
        get_space("nope")


# -- the verb's door ------------------------------------------------------------------------------


def test_search_rejects_bad_input_before_any_training(mnist_small, tmp_path):
    start = time.perf_counter()
    with pytest.raises(UnknownNameError, match="search method"):
        lv.search("mbv2_cifar", mnist_small, method="hyperband", out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"no hyper-parameter\(s\) \['epoch'\]"):
        lv.search("mbv2_cifar", mnist_small, epoch=3, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="sampler='cmaes' is not allowed"):
        lv.search("mbv2_cifar", mnist_small, sampler="cmaes", out_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"no member of space 'mbv2_cifar'.*smallest reachable"):
        lv.search("mbv2_cifar", mnist_small, budget=1e5, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="n_trials=0"):
        lv.search("mbv2_cifar", mnist_small, n_trials=0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        lv.search("mbv2_cifar", mnist_small, storage="sqlite:////no/such/dir/x.db")
    with pytest.raises(ConfigError, match="unknown URL scheme"):
        lv.search("mbv2_cifar", mnist_small, storage="redis2://localhost/0")
    with pytest.raises(ConfigError, match="cannot be reached"):
        lv.search("mbv2_cifar", mnist_small, storage="postgresql://u:p@127.0.0.1:1/db")
    with pytest.raises(ConfigError, match="pass data="):
        lv.search("mbv2_cifar", None, out_dir=tmp_path)
    assert time.perf_counter() - start < 10  # all at the door


def test_a_study_is_not_continued_with_another_space(tmp_path):
    storage = open_storage(None, tmp_path)
    obj = [Objective("score", "maximize")]
    sampler = make_sampler("random", 0)
    open_study(toy_space(), obj, storage=storage, study="s", method="m", sampler=sampler)
    open_study(toy_space(), obj, storage=storage, study="s", method="m", sampler=sampler)
    with pytest.raises(ConfigError, match="exists with another space"):
        open_study(toy_space("b"), obj, storage=storage, study="s", method="m", sampler=sampler)
    with pytest.raises(ConfigError, match="exists with another method"):
        open_study(toy_space(), obj, storage=storage, study="s", method="n", sampler=sampler)
    other = [Objective("score", "minimize")]
    with pytest.raises(ConfigError, match="exists with another objectives"):
        open_study(toy_space(), other, storage=storage, study="s", method="m", sampler=sampler)


# -- the loop -------------------------------------------------------------------------------------


def _toy_study(tmp_path, storage=None, name="t", directions=("maximize",)):
    objectives = [Objective(f"o{i}", d) for i, d in enumerate(directions)]
    study = open_study(
        toy_space(), objectives, storage=open_storage(storage, tmp_path), study=name,
        method="test", sampler=make_sampler("random", 0),
    )  # fmt: skip
    return study, objectives


def test_run_study_counts_completed_trials_reuses_duplicates_and_prunes(tmp_path):
    study, objectives = _toy_study(tmp_path, directions=("maximize", "minimize"))
    calls = []

    def evaluate(sample, spec, trial):
        if sample["a"] == 5:  # "over the budget"
            raise optuna.TrialPruned("over")
        calls.append(dict(sample))
        return {"o0": sample["a"] + sample["b"], "o1": sample["a"], "extra": "kept"}

    result = run_study(study, toy_space(), objectives, evaluate, n_trials=30, progress=False)
    assert len(result.candidates) == 30
    states = [t.state for t in study.trials]
    assert TrialState.PRUNED in states  # pruned trials do not count
    # an architecture is evaluated once; its repeats copy the values
    assert len(calls) == result.distinct() < 30
    dups = [c for c in result.candidates if c.duplicate_of is not None]
    assert dups
    for c in dups:
        first = next(x for x in result.candidates if x.number == c.duplicate_of)
        assert c.values == first.values and c.sample == first.sample
    # the Pareto front is Optuna's, and the best is best on the first objective
    assert {c.number for c in result.pareto} == {t.number for t in study.best_trials}
    assert result.best.values["o0"] == max(c.values["o0"] for c in result.candidates)
    assert result.candidates[0].metrics["extra"] == "kept"
    # running again with a larger n_trials resumes: the 30 stay, 5 more come
    more = run_study(study, toy_space(), objectives, evaluate, n_trials=35, progress=False)
    assert len(more.candidates) == 35


def test_a_resumed_search_proposes_new_architectures(mnist_small, tmp_path):
    """Extending a study in a new call (a new process) must not redraw its first samples."""
    kw = {"budget": 30e6, "out_dir": tmp_path, "progress": False, "max_steps": 1,
          "sampler": "random"}  # fmt: skip
    for n in (1, 2, 3):
        result = lv.search("mbv2_cifar", mnist_small, n_trials=n, **kw)
    assert len(result.candidates) == 3 and result.distinct() == 3


def test_search_cost_is_cpu_time_not_wall_time(tmp_path):
    """A trial that waits (another job holding the cores, a paused worker) costs no CPU."""
    study, objectives = _toy_study(tmp_path)

    def evaluate(sample, spec, trial):
        time.sleep(0.3)  # waiting: wall time, no CPU time
        sum(i * i for i in range(200_000))  # working: both
        return {"o0": sample["a"]}

    result = run_study(study, toy_space(), objectives, evaluate, n_trials=2, progress=False)
    fresh = [c for c in result.candidates if c.duplicate_of is None]
    assert all(c.seconds >= 0.3 and 0 < c.cpu_seconds < c.seconds - 0.2 for c in fresh)
    assert result.cpu_hours == pytest.approx(sum(c.cpu_seconds for c in fresh) / 3600)


def test_a_trial_on_a_gpu_costs_its_wall_time_in_gpu_hours(tmp_path, monkeypatch):
    """On a GPU the launching process's CPU time is not the cost: a trial that put work on
    one records the GPU's name, and its wall time counts as GPU-hours (named apart)."""
    from leanvision.search import engine

    study, objectives = _toy_study(tmp_path)

    def evaluate(sample, spec, trial):
        time.sleep(0.05)
        return {"o0": sample["a"]}

    cpu = run_study(study, toy_space(), objectives, evaluate, n_trials=1, progress=False)
    assert cpu.gpu_hours == 0 and cpu.candidates[0].gpu is None
    assert "GPU" not in cpu.cost() and cpu.cost().endswith("CPU-hours")
    monkeypatch.setattr(engine, "_gpu_used", lambda: "Fake GPU")
    both = run_study(study, toy_space(), objectives, evaluate, n_trials=3, progress=False)
    on_gpu = [c for c in both.candidates if c.gpu == "Fake GPU"]
    fresh = [c for c in both.candidates[1:] if c.duplicate_of is None]  # a copy runs nothing
    assert on_gpu == fresh and fresh and both.candidates[0].gpu is None
    assert both.gpu_hours == pytest.approx(sum(c.seconds for c in on_gpu) / 3600)
    assert "GPU-hours" in both.cost()


def test_stage_gpu_hours_count_the_stretches_on_a_gpu():
    from leanvision.methods.search.common import stage_cpu_hours, stage_gpu_hours

    record = {"wall_s": 5400.0, "cpu_s": 900.0, "stretches": [
        {"wall_s": 1800.0, "device": "cpu"}, {"wall_s": 3600.0, "device": "NVIDIA H100"},
        {"wall_s": 0.0}]}  # fmt: skip
    assert stage_gpu_hours(record) == 1.0 and stage_cpu_hours(record, threads=2) == 0.25
    assert stage_gpu_hours({"stretches": []}) == 0.0


def test_run_study_gives_up_when_the_budget_prunes_everything(tmp_path, capsys):
    from leanvision.search.engine import MAX_ATTEMPTS_PER_TRIAL

    study, objectives = _toy_study(tmp_path)

    def evaluate(sample, spec, trial):
        raise optuna.TrialPruned("over")

    result = run_study(study, toy_space(), objectives, evaluate, n_trials=1, progress=False)
    assert result.candidates == [] and len(study.trials) == MAX_ATTEMPTS_PER_TRIAL
    assert f"stopped after {MAX_ATTEMPTS_PER_TRIAL} trials, 0 completed" in capsys.readouterr().err


def test_ctrl_c_requeues_the_interrupted_architecture(tmp_path):
    study, objectives = _toy_study(tmp_path)
    seen = []

    def evaluate(sample, spec, trial):
        seen.append(dict(sample))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return {"o0": sample["a"]}

    with pytest.raises(KeyboardInterrupt):
        run_study(study, toy_space(), objectives, evaluate, n_trials=5, progress=False)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params == seen[2]
    result = run_study(study, toy_space(), objectives, evaluate, n_trials=5, progress=False)
    assert len(result.candidates) == 5
    assert seen[3] == seen[2]  # the resumed study ran the interrupted architecture first


def _worker(storage: str, n_trials: int, sleep_s: float, marker: Path | None = None):
    args = [sys.executable, str(HERE / "search_worker.py"), storage, str(n_trials), str(sleep_s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    return subprocess.Popen(args + ([str(marker)] if marker else []), env=env)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_two_workers_share_one_study(tmp_path, kind):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}" if kind == "sqlite" else str(tmp_path / "j.log")
    open_storage(storage, tmp_path)  # create the schema once, before the race
    procs = [_worker(storage, 20, 0.05) for _ in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    study = optuna.load_study(study_name="toy", storage=open_storage(storage, tmp_path))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 20 <= len(done) <= 21  # at most one extra trial per extra worker
    workers = {t.user_attrs["lv_worker"] for t in done}
    assert len(workers) == 2  # both processes ran trials


def test_a_killed_worker_loses_no_completed_trial(tmp_path):
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    open_storage(storage, tmp_path)
    run_worker(storage, 4, 0.05)  # four trials completed (here: one process start fewer)
    marker = tmp_path / "hang"
    victim = _worker(storage, 8, 0.05, marker)
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists()
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(2.5)  # past the grace period (2 heartbeats of 1 s)
    assert _worker(storage, 8, 0.05).wait(timeout=120) == 0
    study = optuna.load_study(study_name="toy", storage=open_storage(storage, tmp_path))
    by_number = {t.number: t for t in study.trials}
    killed = by_number[int(marker.read_text())]
    assert killed.state == TrialState.FAIL
    # re-queued by the next worker: its own check (same host, the pid is gone) or, across
    # hosts, Optuna's heartbeat (RetryHeartbeatStaleTrialCallback's "failed_trial")
    retried = [
        t for t in study.trials
        if killed.number in (t.user_attrs.get("lv_retry_of"), t.system_attrs.get("failed_trial"))
    ]  # fmt: skip
    assert retried and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 8 and all(by_number[n].state == TrialState.COMPLETE for n in range(4))


def test_heartbeat_requeues_the_trial_of_a_worker_on_another_host(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path, heartbeat_s=1)
    space, objectives = toy_space(), [Objective("score", "maximize")]
    study = open_study(
        space, objectives, storage=storage, study="toy", method="test",
        sampler=make_sampler("random", 0),
    )  # fmt: skip
    lost = study.ask()
    space.suggest(lost)
    lost.set_user_attr("lv_worker", "another-host:1")  # its pid cannot be checked from here
    storage.record_heartbeat(lost._trial_id)  # it ran, then its machine went away
    time.sleep(2.5)  # past the grace period
    result = run_study(
        study, space, objectives, lambda s, spec, t: {"score": s["a"]}, n_trials=3,
        progress=False,
    )  # fmt: skip
    assert len(result.candidates) == 3
    trials = study.get_trials()
    assert trials[lost.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == trials[lost.number].params


# -- end to end -----------------------------------------------------------------------------------


def test_standalone_search_end_to_end_and_its_cli(mnist_small, tmp_path, capsys):
    space = get_space("mbv2_cifar")
    budget = 30e6  # most members fit: few MACs counts wasted
    result = lv.search(
        space, mnist_small, budget=budget, n_trials=3, out_dir=tmp_path, progress=False,
        max_steps=2, sampler="random",
    )  # fmt: skip
    assert len(result.candidates) == 3 and result.cpu_hours > 0
    for c in result.candidates:
        assert c.values["macs"] <= budget and 0 <= c.values["val_top1"] <= 100
        assert c.metrics["params"] > 0
    model = lv.create_model(result.best_spec.name, **result.best_spec.kwargs, num_classes=10,
                            in_chans=1)  # fmt: skip
    assert (
        lv.profile(model, (1, 28, 28), latency=False, memory=False).macs
        == result.best.values["macs"]
    )
    assert (tmp_path / "search.db").exists()

    from leanvision.cli import main

    rc = main(["search", "mbv2_cifar", "--data", "mnist5k", "--max-train", "64", "--max-val",
               "64", "--n-trials", "4", "--out", str(tmp_path), "--set", "max_steps=1",
               "--set", "sampler=random", "--budget", "30e6"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "4 completed trials" in out  # the same study, resumed: 3 + 1
    # the run's results: the Pareto members timed side by side, a report with the plots
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["models"] and all(r["latency_ms"]["median"] > 0 for r in results["models"])
    assert "CPU-hours" in results["run"]["notes"][0]
    assert len(results["run"]["tables"][0]["rows"]) == 4
    assert (tmp_path / "report.html").exists()
    # a search recipe: unknown keys named, flags and --set over the recipe
    recipe = tmp_path / "search.yaml"
    recipe.write_text("space: mbv2_cifar\nrounds: 3\n")
    assert main(["search", "--recipe", str(recipe)]) == 2
    assert "unknown key(s) ['rounds']" in capsys.readouterr().err
    recipe.write_text(
        "space: mbv2_cifar\ndata: {name: mnist5k, max_train: 64, max_val: 64}\n"
        f"n_trials: 5\nout: {tmp_path}\nbudget: 30.0e6\n"
        "hparams: {max_steps: 1, sampler: random}\n"
    )
    assert main(["search", "--recipe", str(recipe), "--set", "n_trials=5"]) == 0
    assert "5 completed trials" in capsys.readouterr().out
    assert main(["search", "mbv2_cifar", "--out", str(tmp_path), "--set", "sampler=x"]) == 2
    assert main(["list", "spaces"]) == 0 and "mbv2_cifar" in capsys.readouterr().out
    assert main(["list", "search"]) == 0 and "standalone" in capsys.readouterr().out


SEARCH_RECIPES = sorted((HERE.parent / "recipes" / "search").glob("*.yaml"))


@pytest.mark.parametrize("path", SEARCH_RECIPES, ids=[p.name for p in SEARCH_RECIPES])
def test_every_search_recipe_loads_and_its_options_are_valid(path):
    from leanvision.recipe import load_search_recipe
    from leanvision.search import get_search_method

    raw = load_search_recipe(path)
    get_space(raw["space"])
    get_search_method(raw["method"]).make_config(**raw.get("hparams", {}))
    assert isinstance(raw["budget"], float) and raw["n_trials"] >= 1


def test_vit_res_cifar_space_holds_vit_res_tiny_and_checks_budgets(mnist_small):
    space = get_space("vit_res_cifar")
    tiny_like = {"s0_width": 192, "s1_width": 384, "s2_width": 768}
    for s, heads in enumerate((3, 6, 12)):
        tiny_like.update({f"s{s}_b{b}": f"h{heads}m4" for b in range(4)})
    member = space.spec(tiny_like).build(num_classes=10)
    reference = lv.create_model("vit_res_tiny", img_size=32, patch_size=4, num_classes=10)

    def counts(model):
        prof = lv.profile(model, latency=False, memory=False)
        return prof.macs, prof.params

    assert counts(member) == counts(reference)  # the hand design is a member
    small = counts(space.spec(space.smallest).build(num_classes=10))[0]
    assert small < counts(member)[0] / 10
    from leanvision.search import smallest_macs

    assert smallest_macs(space, (3, 32, 32), num_classes=10)[0] == small  # the budget's floor
    assert "skip" not in space.choices["s1_b0"].options and space.hourglass()["s2_b3"] == "skip"
