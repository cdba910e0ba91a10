"""``boundkit certify --method bab``: a progress bar moved by the search's budget, the
``--time-budget`` passed through and checked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from boundkit import cli
from boundkit.cli import EXIT_BAD_INPUT, EXIT_OK, main


def test_certify_bab_with_a_time_budget_and_its_progress_bar(mlp_file: Path, tmp_path: Path,
                                                             capsys, monkeypatch) -> None:
    ticks: list[float] = []
    real = cli._Ticks.tick

    def spy(self: cli._Ticks, k: float) -> None:
        ticks.append(k)
        real(self, k)

    monkeypatch.setattr(cli._Ticks, "tick", spy)
    out = tmp_path / "cert.json"
    code = main(["certify", "--model", str(mlp_file), "--data", "digits", "--n", "2",
                 "--method", "bab", "--time-budget", "0.3", "--out", str(out)])
    assert code == EXIT_OK
    captured = capsys.readouterr()
    assert "bab" in captured.out
    assert "certify" in captured.err  # the bar, on stderr
    # the bar moved during the search (the start radius, then its batches), by 2 samples
    assert len(ticks) > 1 and abs(sum(ticks) - 2) < 1e-9
    doc = json.loads(out.read_text())
    bab = np.array(doc["samples"]["radius"]["bab"])
    assert bab.shape == (2,) and (bab >= 0).all()


def test_certify_refuses_a_bad_time_budget(mlp_file: Path, tmp_path: Path, capsys) -> None:
    code = main(["certify", "--model", str(mlp_file), "--data", "digits", "--n", "2",
                 "--method", "bab", "--time-budget", "-1", "--out", str(tmp_path / "c.json")])
    assert code == EXIT_BAD_INPUT
    assert "--time-budget" in capsys.readouterr().err
