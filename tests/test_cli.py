import subprocess
import sys

import pytest

from lookalike.tools.cli import STAGES, main

VERBS = ["sample-data", "run", "summary", "query", "models", "spark-conf", "ab-report", "simulate-ab", *STAGES]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: lookalike" in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "sample-data" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["extract", "--ds", "2026-13-01"], "is not a date"),
    (["query", "drop table x"], "only read-only queries"),
    (["query"], "give either a SQL string or --file"),
    (["models", "promote", "nope"], "unknown model version"),
    (["run", "--config", "/nonexistent.yaml"], "does not exist"),
    (["ab-report", "--experiment", "nope"], "no experiment 'nope' in the config"),
    (["simulate-ab", "--experiment", "nope"], "has no published partition of experiment_variants"),
])
def test_errors_are_one_clear_line_and_non_zero(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_WAREHOUSE", str(tmp_path / "wh"))
    monkeypatch.setenv("LOOKALIKE_MODELS", str(tmp_path / "models"))
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    assert code != 0
    assert message in captured.err and "Traceback" not in captured.err


def test_stage_verbs_run_one_stage_each(tmp_path, sample_dir, capsys):
    """extract → train → evaluate through the CLI, as a data engineer would debug one ds."""
    import json

    from tests.conftest import DS, write_config

    config = str(write_config(tmp_path, sample_dir))
    assert main(["extract", "--config", config, "--ds", DS]) == 0
    capsys.readouterr()
    assert main(["train", "--config", config, "--ds", DS]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert main(["evaluate", "--config", config, "--ds", DS]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["queries"] > 10 and result["model_version"] == trained["model_version"]
    assert main(["models", "list", "--config", config]) == 0
    assert result["model_version"] in capsys.readouterr().out
