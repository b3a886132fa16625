"""The main job (`leanvision quickstart` / `make demo`) as a smoke run of a few steps."""

from __future__ import annotations

import json

import pytest

from leanvision.quickstart import run_quickstart


@pytest.mark.slow
def test_quickstart_smoke(tmp_path):
    """Four models in results.json, all compressed ≤ 0.8× baseline MACs, timed, reported."""
    out = run_quickstart(out_dir=tmp_path, epochs=1, threads=1, max_steps=2, progress=False)
    assert out == tmp_path
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["run"]["name"] == "quickstart"
    rows = {m["name"]: m for m in doc["models"]}
    assert list(rows) == ["resnet20", "ghost_resnet20_kd", "resnet20_w0.5_kd", "resnet8_kd"]
    base = rows["resnet20"]
    assert base["method_chain"] == [] and base["dataset"] == "mnist5k"
    assert rows["ghost_resnet20_kd"]["method_chain"] == ["ghost", "kd"]
    assert rows["resnet20_w0.5_kd"]["method_chain"] == ["kd"]
    assert rows["resnet8_kd"]["method_chain"] == ["kd"]
    for name in ("ghost_resnet20_kd", "resnet20_w0.5_kd", "resnet8_kd"):
        row = rows[name]
        assert row["macs"] <= 0.8 * base["macs"], name
        assert row["params"] < base["params"], name
        assert row["baseline"] == "resnet20"
        assert row["ratios"]["macs"] == pytest.approx(row["macs"] / base["macs"], rel=1e-6)
    for row in rows.values():
        lat = row["latency_ms"]
        assert lat["median"] > 0 and lat["batch"] == 32 and lat["threads"] == 1
        assert 0.0 <= row["top1"] <= 100.0 and row["split"] == "test"
    assert (tmp_path / "report.html").stat().st_size > 0
    # every model is saved reloadable, and reloads to the same test accuracy
    import leanvision as lv

    data = lv.load_data("mnist5k", batch_size=64)
    back = lv.load(tmp_path / "models" / "resnet8_kd.pt")
    assert lv.evaluate(back, data.test)["top1"] == pytest.approx(rows["resnet8_kd"]["top1"])
    assert "ghost_resnet20_kd" in (tmp_path / "report.md").read_text()
