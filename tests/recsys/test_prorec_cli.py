"""python -m recsys: help that explains, train -> tune -> retrain with the tuned settings -> evaluate, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recsys.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--slice-items", "200", "--slice-users", "1200", "--sasrec-hidden", "16", "--sasrec-epochs", "1",
    "--quantizer", "rkmeans", "--levels", "8", "8", "8", "--d-model", "16", "--heads", "2", "--d-ff", "32",
    "--encoder-layers", "1", "--decoder-layers", "1", "--encoder-unit", "item", "--epochs", "1",
    "--eval-users", "100", "--beam-width", "20",
]  # fmt: skip


def test_help_explains_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "recsys", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    for word in ("train", "tune", "export", "evaluate", "semantic domination", "leave-one-out", "prorec"):
        assert word in out
    for command in ("train", "tune", "export", "evaluate"):
        with pytest.raises(SystemExit) as stop:
            main([command, "--help"])
        assert stop.value.code == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "collab"
    assert main(["train", "--dataset", "beauty", "--variant", "collab", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_a_complete_run(run_dir: Path) -> None:
    info = json.loads((run_dir / "run.json").read_text())
    assert info["variant"] == "collab" and info["data"]["slice"] == {"top_items": 200, "max_users": 1200}
    assert set(info["metrics"]) == {"validation_sample", "validation", "test"}
    assert info["stage1"]["collaborative"]["epochs_run"] == 1
    assert info["codes"]["method"] == "rkmeans" and info["level_sizes"][:3] == [8, 8, 8]
    for name in ("generator.pt", "codes.npy", "item_ids.npy", "embeddings.npz", "titles.json"):
        assert (run_dir / name).is_file()


def test_train_with_a_resume_dir_keeps_every_stage_and_a_rerun_reuses_them(tmp_path: Path) -> None:
    """--resume-dir keeps stage 1 (its embeddings and its SASRec's checkpoint), the codes and the generator's
    checkpoint; the same command again trains nothing anew and writes the same model."""
    keep = tmp_path / "keep"
    argv = ["train", "--dataset", "beauty", "--variant", "collab", *TINY, "--resume-dir", str(keep)]
    assert main([*argv, "--out", str(tmp_path / "first")]) == 0
    kept = sorted(p.name.split("-")[0] + p.suffix for p in keep.iterdir())
    assert kept == ["generator.pt", "semantic.npz", "stage1.npz", "stage1.pt"], kept
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    first, again = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("first", "again"))
    assert "read_from" in again["stage1"] and "read_from" in again["codes"]
    assert again["fit"]["history"] == first["fit"]["history"] and again["metrics"] == first["metrics"]
    assert (tmp_path / "first" / "codes.npy").read_bytes() == (tmp_path / "again" / "codes.npy").read_bytes()


def test_tune_then_retrain_with_the_best_settings(run_dir: Path, tmp_path: Path) -> None:
    tuned = tmp_path / "tuning"
    tiny = [*TINY[TINY.index("--d-model") :], "--space", "small"]  # the small space keeps the trials quick
    argv = ["tune", "--run", str(run_dir), *tiny, "--trials", "2", "--out", str(tuned)]
    assert main(argv) == 0
    best = json.loads((tuned / "best_params.json").read_text())
    assert best["n_trials"] == 2 and best["model"] == "prorec" and best["variant"] == "collab"
    assert best["storage"].startswith("sqlite:///") and (tuned / "optuna.db").is_file()
    assert main(argv) == 0  # the same command resumes the study
    best = json.loads((tuned / "best_params.json").read_text())  # trials 3 and 4 may have found a better setting
    assert best["n_trials"] == 4
    # Many workers share a study as forecasting's do, which needs a server database: SQLite is refused up front.
    assert main([*argv[:-1], str(tmp_path / "parallel"), "--workers", "2"]) == 2
    retrained = tmp_path / "retrained"
    argv = ["train", "--from-run", str(run_dir), "--params", str(tuned / "best_params.json"), "--epochs", "1"]
    assert main([*argv, "--eval-users", "100", "--out", str(retrained)]) == 0
    info = json.loads((retrained / "run.json").read_text())
    assert info["config"]["generator"]["d_model"] == best["settings"]["generator"]["d_model"]
    assert (retrained / "codes.npy").read_bytes() == (run_dir / "codes.npy").read_bytes()  # stage 1 and IDs reused
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(retrained), "--limit", "150", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["engine"] == "torch"


def test_bad_input_exits_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--dataset", "toys", "--variant", "tiger", *TINY, "--out", str(tmp_path / "x")]) == 2
    assert "needs item titles" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(tmp_path / "missing")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["evaluate", "--store", str(tmp_path)]) == 2
    assert "either --run" in capsys.readouterr().err


def test_the_size_space_builds_valid_generators() -> None:
    import optuna

    from recsys.prorec_training import GeneratorShape, GeneratorTrainConfig
    from recsys.tuning import search_space

    params = {"d_model": 192, "encoder_layers": 4, "decoder_layers": 4, "d_ff_factor": 8, "dropout": 0.1}
    params |= {"encoder_unit": "token", "lr": 1e-3, "warmup_steps": 500, "weight_decay": 0.01}
    settings = search_space(optuna.trial.FixedTrial(params), "tiger", "size")
    shape = GeneratorShape(**settings["generator"])
    assert (shape.heads, shape.d_ff, shape.encoder_unit) == (6, 1024, "token")  # heads of 32, MLP capped at 1024
    assert GeneratorTrainConfig(**settings["train"]).warmup_steps == 500


def test_the_quick_recipe_is_a_valid_train_command(tmp_path: Path) -> None:
    from recsys.cli import _pipeline_config, build_parser
    from recsys.quick_recipe import QUICK_SLICE, quick_train_args

    args = build_parser().parse_args(quick_train_args(tmp_path / "run"))
    config = _pipeline_config(args, args.variant)
    assert (args.slice_items, args.slice_users) == (QUICK_SLICE["top_items"], QUICK_SLICE["max_users"])
    # the settings its docstring measured: small code levels, item-level encoder, a distilled PRORec
    assert config.quantizer.level_sizes == (16, 16, 16) and config.generator.encoder_unit == "item"
    assert config.variant == "prorec" and config.train.distill_weight > 0 and args.out == str(tmp_path / "run")


def test_a_cpu_budget_counts_cpu_time_in_both_stages(tmp_path: Path) -> None:
    """--budget-clock cpu bounds the SASRecs of stage 1 as well as the generator: on a loaded machine a wall-clock
    budget bought a stage-1 SASRec 7 epochs where it had had 17, and the codes built on it were worse."""
    from arcast_core.training import TrainConfig
    from recsys.cli import _pipeline_config, build_parser
    from recsys.prorec_training import stage1_train_config

    argv = ["train", "--out", str(tmp_path / "run"), "--sasrec-minutes", "3", "--minutes", "5"]
    for clock in ("wall", "cpu"):
        config = _pipeline_config(build_parser().parse_args([*argv, "--budget-clock", clock]), "prorec")
        assert (config.stage1.budget_clock, config.train.budget_clock) == (clock, clock)
        made = stage1_train_config(config.stage1, seed=0, progress=False)
        assert isinstance(made, TrainConfig) and (made.max_seconds, made.budget_clock) == (180, clock)
