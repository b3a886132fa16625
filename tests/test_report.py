"""Tests for leanvision.report: results.json schema, writer, tables, plots and reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from leanvision.errors import ConfigError, DataError
from leanvision.report import (
    ModelResult,
    build_summary,
    compute_ratios,
    load_results,
    markdown_table,
    plot_tradeoffs,
    rich_table,
    write_report,
    write_results,
)


def _latency(median: float, threads: int = 2) -> dict:
    return {
        "median": median,
        "p90": median * 1.1,
        "batch": 1,
        "threads": threads,
        "backend": "pytorch",
    }


def _models(suffix: str = "") -> list[dict]:
    base = f"resnet20{suffix}"
    return [
        dict(
            name=base,
            method_chain=[],
            dataset="cifar10",
            split="test",
            top1=91.50,
            top5=99.7,
            params=272_474,
            macs=40_810_000,
            latency_ms=_latency(4.0),
            energy_uj=1234.5,
            seed=0,
        ),
        dict(
            name=f"resnet20-scop{suffix}",
            method_chain=["scop", "kd"],
            dataset="cifar10",
            split="test",
            top1=90.75,
            params=150_000,
            macs=20_405_000,
            latency_ms=_latency(2.5),
            energy_uj=600.0,
            baseline=base,
            seed=0,
            paper={"top1": 90.83, "macs": 21_300_000, "source": "SCOP, NeurIPS 2020, Tab. 1"},
            notes="finetuned 10 epochs",
        ),
    ]


# -- schema -------------------------------------------------------------------------------------


def test_unknown_key_raises_config_error_naming_it():
    bad = dict(_models()[0], top_1=91.0)
    with pytest.raises(ConfigError) as err:
        ModelResult.from_dict(bad)
    msg = str(err.value)
    assert "'top_1'" in msg
    assert "top1" in msg and "macs" in msg  # lists the allowed keys


def test_missing_required_key_raises_config_error_naming_it():
    bad = {k: v for k, v in _models()[0].items() if k != "macs"}
    with pytest.raises(ConfigError, match="'macs'"):
        ModelResult.from_dict(bad)


@pytest.mark.parametrize(
    ("key", "value"),
    [("top1", 0.9 * 1000), ("params", 1.5), ("macs", float("nan")), ("date", "yesterday")],
)
def test_bad_values_raise_config_error(key, value):
    with pytest.raises(ConfigError, match=key):
        ModelResult.from_dict(dict(_models()[0], **{key: value}))


def test_latency_requires_batch_and_threads():
    with pytest.raises(ConfigError, match="'threads'"):
        ModelResult.from_dict(dict(_models()[0], latency_ms={"median": 1.0, "batch": 1}))


# -- ratios -------------------------------------------------------------------------------------


def test_ratios_against_baseline_by_hand():
    base, small = compute_ratios(_models())
    assert base.ratios == {}
    r = small.ratios
    assert r["speedup"] == pytest.approx(4.0 / 2.5)  # 1.6x
    assert r["latency"] == pytest.approx(2.5 / 4.0)
    assert r["macs"] == pytest.approx(0.5)  # 20.405 M / 40.81 M
    assert r["params"] == pytest.approx(150_000 / 272_474, rel=1e-5)
    assert r["top1_delta"] == pytest.approx(-0.75)


def test_ratios_are_none_when_inputs_missing():
    models = _models()
    models[1] = dict(models[1], latency_ms=None, top1=None)
    _, small = compute_ratios(models)
    assert small.ratios["speedup"] is None and small.ratios["top1_delta"] is None
    assert small.ratios["macs"] == pytest.approx(0.5)


def test_unknown_baseline_and_incomparable_latency_raise():
    models = _models()
    with pytest.raises(ConfigError, match="'nope'"):
        compute_ratios([models[0], dict(models[1], baseline="nope")])
    with pytest.raises(ConfigError, match="threads"):
        compute_ratios([models[0], dict(models[1], latency_ms=_latency(2.5, threads=4))])


# -- writer / loader ----------------------------------------------------------------------------


def test_round_trip_write_load(tmp_path):
    path = write_results(tmp_path / "run", _models(), run_info={"command": "leanvision bench x"})
    assert path == tmp_path / "run" / "results.json"
    doc = json.loads(path.read_text())
    assert doc["schema"] == "leanvision.results/1"
    assert doc["run"]["command"] == "leanvision bench x"
    assert doc["run"]["name"] == "run"
    loaded = load_results(path)
    assert load_results(tmp_path / "run") == loaded  # a run directory works too
    assert [m.name for m in loaded] == ["resnet20", "resnet20-scop"]
    for m, src in zip(loaded, _models()):
        assert m.params == src["params"] and m.macs == src["macs"] and m.top1 == src["top1"]
        assert m.latency_ms == src["latency_ms"]
        assert m.git_commit  # filled from git, or "unknown"
        assert m.date is not None
    assert loaded[1].paper["top1"] == pytest.approx(90.83)
    assert loaded[1].ratios["speedup"] == pytest.approx(1.6)
    # ModelResult objects round-trip unchanged through a second write.
    again = load_results(write_results(tmp_path / "run2", loaded))
    assert again == loaded


def test_atomic_write_leaves_no_temp_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_results(run, _models())
    write_results(run, _models())  # overwrite through os.replace
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]
    before = (run / "results.json").read_text()
    with pytest.raises(ConfigError):  # not serialisable: refused before anything is written
        write_results(run, _models(), run_info={"bad": object()})
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]

    # A crash at the rename keeps the old file and removes the temp file.
    import leanvision.report.writer as writer

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(writer.os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_results(run, _models("-new"))
    monkeypatch.undo()
    assert (run / "results.json").read_text() == before
    assert sorted(p.name for p in run.iterdir()) == ["results.json"]


def test_missing_file_raises_data_error_naming_path(tmp_path):
    missing = tmp_path / "nowhere" / "results.json"
    with pytest.raises(DataError, match=str(missing)):
        load_results(missing)
    empty_dir = tmp_path / "empty_run"
    empty_dir.mkdir()
    with pytest.raises(DataError, match="empty_run"):
        load_results(empty_dir)


def test_foreign_json_raises_data_error(tmp_path):
    foreign = tmp_path / "other.json"
    foreign.write_text('{"accuracy": 1}')
    with pytest.raises(DataError, match="not a leanvision results file"):
        load_results(foreign)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        load_results(broken)


# -- tables -------------------------------------------------------------------------------------


def test_markdown_table_formats_numbers_and_paper_columns():
    table = markdown_table(_models())
    lines = table.strip().splitlines()
    assert len(lines) == 4  # header, rule, two models
    header = lines[0]
    assert "Paper top-1 %" in header and "Paper MACs (M)" in header
    assert "batch 1, 2 threads" in header
    small = lines[3]
    for cell in (
        "90.75",
        "-0.75",
        "0.15",
        "20.4",
        "2.50",
        "1.60×",
        "600.00",
        "90.83",
        "21.3",
        "scop → kd",
    ):
        assert f" {cell} " in small, cell
    base = lines[2]
    for cell in ("91.50", "0.27", "40.8", "4.00", "1,234", "baseline"):
        assert f" {cell} " in base, cell
    assert base.count("—") >= 2  # no method chain, no paper numbers


def test_markdown_table_without_paper_has_no_paper_columns():
    models = [dict(m, paper=None) for m in _models()]
    assert "Paper" not in markdown_table(models)
    models[1]["top1"] = None
    assert "| — |" in markdown_table(models)


def test_a_paper_source_without_numbers_goes_to_the_notes_not_to_columns(tmp_path):
    models = [dict(m, paper=None) for m in _models()]
    models[1]["paper"] = {"source": "Some paper, ImageNet only"}
    assert "Paper" not in markdown_table(models)  # no empty paper columns
    write_results(tmp_path / "run", models, allow_dirty=True)
    text = build_summary([tmp_path / "run"], tmp_path / "RESULTS.md").read_text()
    assert "**" + models[1]["name"] + "** paper numbers: Some paper, ImageNet only" in text
    assert "Paper top-1" not in text


def test_rich_table_has_one_row_per_model():
    from rich.console import Console

    table = rich_table(_models())
    assert table.row_count == 2
    console = Console(width=300, record=True)
    console.print(table)
    assert "resnet20-scop" in console.export_text()


# -- plots and reports --------------------------------------------------------------------------


def test_plot_tradeoffs_skips_plots_without_data(tmp_path):
    models = compute_ratios([dict(m, latency_ms=None) for m in _models()])
    paths = plot_tradeoffs(models, tmp_path)
    assert [p.name for p in paths] == ["acc_vs_macs.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_top1 = compute_ratios([dict(m, top1=None) for m in _models()])
    assert plot_tradeoffs(no_top1, tmp_path / "x") == []


def test_write_report_writes_md_html_and_plots(tmp_path):
    run = tmp_path / "run"
    write_results(run, _models(), run_info={"command": "leanvision bench scop"})
    out = write_report(run)
    assert set(out) == {"markdown", "html", "acc_vs_macs", "acc_vs_latency"}
    for name in ("report.md", "report.html", "acc_vs_macs.png", "acc_vs_latency.png"):
        assert (run / name).is_file(), name
    page = (run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert "leanvision bench scop" in page and "90.75" in page
    md = (run / "report.md").read_text()
    assert "](acc_vs_macs.png)" in md and "leanvision bench scop" in md
    assert "| resnet20-scop |" in md


def test_build_summary_over_two_results_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_results(
        "runs/a",
        _models(),
        run_info={
            "name": "SCOP on CIFAR-10",
            "command": "leanvision bench scop",
            "description": "Pruning ResNet-20.",
        },
    )
    results = Path("benchmarks/results")
    results.mkdir(parents=True)
    write_results("tmp_b", _models("-b"), run_info={"name": "Second run"})
    os.replace("tmp_b/results.json", results / "second.json")

    out = build_summary(["runs/a", "benchmarks/results"], "docs/RESULTS.md")
    text = out.read_text()
    assert "Generated by `leanvision report`" in text and "edit" in text
    assert "runs/a/results.json" in text and "benchmarks/results/second.json" in text
    assert "## SCOP on CIFAR-10" in text and "## Second run" in text
    assert "Pruning ResNet-20." in text and "leanvision bench scop" in text
    assert "| resnet20-scop-b |" in text
    links = [line[line.index("](") + 2 : -1] for line in text.splitlines() if line.startswith("![")]
    assert links and all(link.startswith("RESULTS_plots/") for link in links)
    for link in links:
        assert (out.parent / link).is_file(), link


def test_build_summary_missing_input_raises(tmp_path):
    with pytest.raises(DataError, match="nothing_here"):
        build_summary([tmp_path / "nothing_here"], tmp_path / "RESULTS.md")


# -- import hygiene -----------------------------------------------------------------------------


def test_report_package_does_not_import_torch(tmp_path):
    # The parent package is stubbed so that only leanvision.report and what it imports are
    # judged, and torch is made unimportable so any use of it (even lazy) fails.
    script = textwrap.dedent(
        f"""
        import importlib.abc, importlib.util, sys, types

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch imported by leanvision.report")

        sys.meta_path.insert(0, NoTorch())
        spec = importlib.util.find_spec("leanvision")
        pkg = types.ModuleType("leanvision")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["leanvision"] = pkg

        import leanvision.report as r
        models = [dict(name="m", dataset="d", split="test", top1=50.0, params=10, macs=100,
                       latency_ms={{"median": 1.0, "batch": 1, "threads": 1}})]
        r.write_results({str(tmp_path)!r}, models)
        r.write_report({str(tmp_path)!r})
        r.rich_table(r.load_results({str(tmp_path)!r}))
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# -- extra columns and run tables -----------------------------------------------------------------


def test_throughput_peak_memory_and_paper_params_columns():
    models = _models()
    models[0]["peak_mem_mb"] = 12.5
    models[1]["paper"] = dict(models[1]["paper"], params=160_000)
    lines = markdown_table(models).strip().splitlines()
    header = lines[0]
    assert "Throughput img/s" in header and "Peak mem MiB" in header
    assert "Paper params (M)" in header
    # batch 1 at 4.0 ms is 250 img/s; at 2.5 ms 400 img/s
    assert " 250.0 " in lines[2] and " 400.0 " in lines[3]
    assert " 12.5 " in lines[2] and " 0.16 " in lines[3]


def _scaling_table() -> dict:
    return {
        "title": "Peak memory against tokens",
        "columns": ["tokens", "dense MiB", "long-short MiB"],
        "rows": [[196, 10.25, 3.5], [784, 150.0, 13.0], [3136, None, 52.0]],
        "notes": "dense ran out of memory at 3136 tokens",
    }


def test_run_tables_round_trip_and_render(tmp_path):
    """A run with only tables (no models) writes, loads and renders them."""
    run = tmp_path / "scaling"
    write_results(run, [], run_info={"name": "Scaling", "tables": [_scaling_table()]})
    out = write_report(run)
    md = out["markdown"].read_text()
    assert "**Peak memory against tokens**" in md
    assert "| 784 | 150.0 | 13.0 |" in md and "| 3136 | — | 52.0 |" in md
    assert "dense ran out of memory" in md
    assert "Top-1 %" not in md  # no model table for a run without models
    assert "<h2>Peak memory against tokens</h2>" in out["html"].read_text()
    summary = build_summary([run], tmp_path / "RESULTS.md").read_text()
    assert "| 196 | 10.2 | 3.5 |" in summary


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rows": [[1, 2]]}, "3 cells"),
        ({"columns": []}, "columns"),
        ({"rows": [[1, {"a": 1}, 2]]}, "number, string or null"),
        ({"title": ""}, "title"),
        ({"colour": "red"}, "unknown key 'colour'"),
    ],
)
def test_bad_run_tables_raise_config_error(tmp_path, change, match):
    table = dict(_scaling_table(), **change)
    with pytest.raises(ConfigError, match=match):
        write_results(tmp_path / "bad", [], run_info={"tables": [table]})


def test_columns_nobody_filled_are_left_out():
    """A size-only run (no accuracy, no baseline, no energy) shows no empty columns."""
    models = [
        dict(name=n, dataset="random input", split="-", params=p, macs=m)
        for n, p, m in (("a", 1_000_000, 2_000_000), ("b", 3_000_000, 4_000_000))
    ]
    header = markdown_table(models).splitlines()[0]
    assert "Top-1" not in header and "Energy" not in header and "Speed-up" not in header
    assert "Params (M)" in header and "MACs (M)" in header


def _sr_rows() -> list[dict]:
    return [
        dict(name=n, dataset="sr", split="test", params=p, macs=m, baseline="edsr",
             metrics={"psnr@Set5": ps, "ssim@Set5": ss, "psnr@Set14": p14})
        for n, p, m, ps, ss, p14 in (("edsr", 1_369_859, 5_600_000_000, 36.104, 0.95093, 32.05),
                                     ("ghost", 700_000, 2_900_000_000, 36.0, 0.9501, 31.9))
    ]  # fmt: skip


def test_task_metrics_get_a_column_each_after_top1():
    """An SR run's PSNR/SSIM per test set are columns (PSNR 2 decimals, SSIM 4); with no
    top-1 the delta column is the first metric's."""
    header, _, base, ghost = markdown_table(_sr_rows()).strip().splitlines()
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:6] == ["Model", "Dataset", "Δ PSNR dB (Set5) vs baseline", "PSNR dB (Set5)",
                        "SSIM (Set5)", "PSNR dB (Set14)"]  # fmt: skip
    assert "Top-1" not in header
    assert " baseline | 36.10 | 0.9509 | 32.05 " in base
    assert " -0.10 | 36.00 | 0.9501 | 31.90 " in ghost
    rows = _sr_rows()
    del rows[1]["metrics"]["psnr@Set14"]  # a metric one row lacks: a dash, not an error
    assert " 36.00 | 0.9501 | — " in markdown_table(rows)
    assert ModelResult.from_dict(ModelResult.from_dict(rows[0]).to_dict()).metrics == {
        "psnr@Set5": 36.104, "ssim@Set5": 0.95093, "psnr@Set14": 32.05}  # fmt: skip


@pytest.mark.parametrize(
    "metrics, match",
    [
        ({"PSNR": 30.0}, "metric name 'PSNR'.*lowercase"),
        ({"psnr@": 30.0}, "metric name 'psnr@'"),
        ({"top1@Set5": 30.0}, "own keys"),
        ({"psnr": None}, "leave a metric out"),
        ({"psnr": float("nan")}, "must be finite"),
        ({"psnr": "30"}, "must be a number"),
        ([("psnr", 30.0)], "must be a dict"),
    ],
)
def test_bad_metrics_raise_config_error_naming_them(metrics, match):
    with pytest.raises(ConfigError, match=match):
        ModelResult.from_dict(dict(_sr_rows()[0], metrics=metrics))
