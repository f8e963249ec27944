from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from autopaint.cli import app


def test_cli_train_then_models_list_and_show(make_dataset, tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "ds", size=64, n_train=8, n_val=4)
    models = tmp_path / "models"
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--dataset", str(ds), "--arch", "pconv", "--modality", "pet",
                              "--preset", "demo", "--epochs", "1", "--max-steps", "1", "--perceptual", "off",
                              "--out", str(models / "m1"), "--device", "cpu", "--quiet", "--max-val", "4"])
    assert res.exit_code == 0, res.output
    assert "1 steps" in res.output
    res = runner.invoke(app, ["models", "list", "--root", str(models)])
    assert res.exit_code == 0 and "m1" in res.output and "pconv" in res.output
    res = runner.invoke(app, ["models", "show", "m1", "--root", str(models)])
    card = json.loads(res.output)
    assert card["modality"] == "pet" and card["image_size"] == 64 and card["architecture"] == "pconv"
