"""``gridtwin train`` / ``evaluate`` command-line behaviour: missing extras are one line
naming the extra, ``train --help`` reads as text, and training writes to a new directory
unless the packaged models are replaced on purpose."""

from __future__ import annotations

from pathlib import Path

import pytest
from absent import gridtwin_without

from gateway.cli import main
from models.card import card_path, load_card, sha256_file
from models.cli import DEFAULT_OUT, output_dir
from models.runtime import PREDICTOR, PV, default_models_dir, load_model


def _one_line_naming(err: str, start: str, extra: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(start), lines[0]
    assert lines[0].endswith(f"pip install 'gridtwin[{extra}]'"), lines[0]
    assert "Traceback" not in err


def test_evaluate_plots_without_matplotlib_stops_before_any_work(tmp_path: Path) -> None:
    out = gridtwin_without("matplotlib", "evaluate", "--quick", "--json", "--plots",
                           str(tmp_path / "figs"), timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    _one_line_naming(out.stderr, "gridtwin evaluate --plots needs matplotlib", "plots")
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("what", ["all", "predictor", "pv"])
def test_train_without_torch_names_the_train_extra(tmp_path: Path, what: str) -> None:
    out = gridtwin_without("torch", "train", what, "--smoke", cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    _one_line_naming(out.stderr, "gridtwin train needs torch", "train")
    assert not (tmp_path / DEFAULT_OUT).exists()


def test_train_help_is_text_not_a_python_dict(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "{'" not in text and "'start'" not in text
    assert "1990-03-20 06:00, 6 h at 1 s, 10 % bad data, seed 101" in text
    assert "--overwrite-packaged" in text and "./models-trained/" in text


def test_output_dir_defaults_to_a_new_complete_models_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = default_models_dir()
    before = sha256_file(card_path(packaged / "predictor.onnx"))
    monkeypatch.chdir(tmp_path)
    logged: list[str] = []
    out = output_dir(None, False, logged.append)
    assert out == DEFAULT_OUT and (tmp_path / DEFAULT_OUT).is_dir()
    assert logged and "packaged models" in logged[0]
    # a complete models directory: both models and the evaluation baselines load from it
    assert load_model(PREDICTOR, out).path.parent.resolve() == (tmp_path / DEFAULT_OUT)
    assert load_model(PV, out).card.name == load_model(PV).card.name
    assert (out / "baselines" / "predictor_bp.onnx").is_file()
    # files already there (trained before) are kept, not re-copied
    card = out / "predictor.card.json"
    card.write_text(card.read_text().replace('"threshold"', '"threshold_kept"', 1))
    logged.clear()
    output_dir(None, False, logged.append)
    assert "threshold_kept" in card.read_text() and not logged
    assert sha256_file(card_path(packaged / "predictor.onnx")) == before


def test_packaged_models_only_with_the_explicit_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packaged = default_models_dir()
    assert output_dir(None, True, print) == packaged
    assert main(["train", "threshold", "--out", str(packaged)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite-packaged" in err
    assert main(["train", "threshold", "--overwrite-packaged", "--out", str(tmp_path)]) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_threshold_writes_the_new_directory_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = card_path(default_models_dir() / "predictor.onnx")
    before = sha256_file(packaged)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "threshold", "--seed", "3"]) == 0
    card = load_card(card_path(tmp_path / DEFAULT_OUT / "predictor.onnx"))
    assert "clean held-out values" in card.extra["threshold_method"]
    assert 4.0 <= float(card.extra["threshold"]) <= 50.0
    assert sha256_file(packaged) == before
