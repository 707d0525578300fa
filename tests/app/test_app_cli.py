"""The ``pairsmith`` command: help for each command, ``list``, argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pairsmith.__main__ import main as module_main
from pairsmith.app.cli import main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["train", "eval", "list", "report"]),
        (["train"], ["--config", "--out", "--resume", "--data-root", "--devices", "KEY=VALUE",
                     "optim.lr=0.06", "optim: ", "eval.linear: "]),
        (["eval"], ["RUN_DIR_or_CKPT", "--linear", "--baselines", "--data-root"]),
        (["list"], ["--kind"]),
        (["report"], ["RUN_DIR", "--out"]),
    ],
)  # fmt: skip
def test_help(argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_list_matches_python_m_pairsmith_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    ours = capsys.readouterr().out
    assert module_main(["list"]) == 0
    assert ours == capsys.readouterr().out
    assert "methods.simclr" in ours


def test_list_kind(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--kind", "method"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(line.startswith("method") for line in lines)


def test_missing_command_and_bad_arguments() -> None:
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main(["train"])  # --out is required
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--devices", "two"])


def test_eval_and_report_of_missing_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(tmp_path / "nope")]) == 2
    assert "neither a run directory nor a checkpoint" in capsys.readouterr().err
    assert main(["eval", str(tmp_path)]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "metrics.csv" in capsys.readouterr().err
