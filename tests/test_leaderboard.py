"""bench/leaderboard.py: the protocols' cells, the rows file (resume, concurrent writers), the README table."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from tests.scripts import load_script

ROW_FIELDS = {"protocol", "dataset", "features", "horizon", "model", "mse", "mae", "windows"}
ROW_FIELDS |= {"train_seconds", "budget", "reduced", "command"}


@pytest.fixture(scope="module")
def leaderboard() -> ModuleType:
    return load_script("bench/leaderboard.py", "leaderboard")


def test_protocol_cells_follow_the_papers(leaderboard) -> None:
    informer = leaderboard.protocol_tasks("informer")
    assert len(informer) == 20 and {(t.dataset, t.features) for t in informer} == set(leaderboard.INFORMER_PLAN)
    h720 = next(t for t in informer if (t.dataset, t.features, t.horizon) == ("ETTh1", "M", 720))
    assert (h720.lookback, h720.label_len) == (336, 336)  # the official ETTh1 script
    assert [(t.lookback, t.horizon, t.train_horizon) for t in leaderboard.protocol_tasks("autotimes")] == [
        (672, h, 96) for h in (96, 192, 336, 720)
    ]
    assert [(t.features, t.lookback, t.horizon) for t in leaderboard.protocol_tasks("arnet")] == [
        ("S", 168, h) for h in (24, 48, 168)
    ]
    # Only Informer gets the decoder's known values and the scripts' calendar; baselines see the same windows.
    ettm1 = next(t for t in informer if t.dataset == "ETTm1")
    assert ettm1.data(None, "informer").freq == "1h" and ettm1.data(None, "linear").freq is None
    assert ettm1.data(None, "linear").label_len == 0


def test_informer_reads_ettm1_on_the_scripts_hourly_calendar(leaderboard, data_dir: Path) -> None:
    """The official ETTm1 script made hourly features from 15-minute rows: every row is kept (not refused as off the
    hourly grid, as the loader's gap check did to the first ETTm1 run) and the calendar has the hourly 4 features."""
    from forecasting.data import prepare_data

    ettm1 = next(t for t in leaderboard.protocol_tasks("informer") if t.dataset == "ETTm1")
    prepared = prepare_data(ettm1.data(str(data_dir), "informer"))
    assert prepared.freq == "1h" and prepared.train.marks.shape[1] == 4
    assert len(prepared.table) == 69_680  # every 15-minute row, none merged or inserted
    plain = prepare_data(ettm1.data(str(data_dir), "linear"))
    assert len(plain.table) == 69_680 and plain.freq != "1h"


def test_rows_file_replaces_by_key_and_keeps_other_writers_rows(leaderboard, tmp_path: Path) -> None:
    path = tmp_path / "board.json"
    first, second = leaderboard.Leaderboard(path), leaderboard.Leaderboard(path)  # two runs sharing one file
    row = {"protocol": "arnet", "dataset": "ETTh1", "features": "S", "horizon": 24, "model": "naive", "mse": 1.0}
    first.add(row)
    second.add({**row, "model": "linear", "mse": 0.5})
    first.add({**row, "mse": 0.9})  # the same cell again replaces, never duplicates
    rows = json.loads(path.read_text())["rows"]
    assert [(r["model"], r["mse"]) for r in rows] == [("naive", 0.9), ("linear", 0.5)]
    assert second.has(("arnet", "ETTh1", "S", 24, "naive")) and not second.has(("arnet", "ETTh1", "S", 48, "naive"))


def test_paper_rows_carry_every_field_and_their_source(leaderboard) -> None:
    rows = leaderboard.paper_rows()
    assert all(set(r) >= ROW_FIELDS and r["source"] for r in rows)
    informer = {(r["dataset"], r["features"], r["horizon"]): r["mse"] for r in rows if r["model"] == "informer-paper"}
    assert informer[("ETTh1", "M", 24)] == 0.577 and informer[("ETTm1", "M", 672)] == 1.192
    assert {r["model"] for r in rows} == {"informer-paper", "autotimes-paper", "dlinear-paper"}


def test_gpu_rows_are_every_finished_paper_recipe_run(leaderboard, tmp_path: Path) -> None:
    rows = leaderboard.gpu_rows()  # the committed runs of bench/results/gpu/
    informer = json.loads(leaderboard.GPU_INFORMER_RUN.read_text())["accuracy"]
    assert all(set(r) >= ROW_FIELDS for r in rows)
    assert len([r for r in rows if r["model"] == "informer-gpu"]) == len(informer)
    first = next(r for r in rows if r["model"] == "informer-gpu")
    assert first["mse"] == informer[0]["test"]["scaled"]["mse"] and not first["reduced"]
    autotimes = [r for r in rows if r["model"] == "autotimes-gpu"]
    assert sorted(r["horizon"] for r in autotimes) == [96, 192, 336, 720] and all(r["reduced"] for r in autotimes)
    # its command's --batch-size 256 counts windows of 7 channels: 7 times the script's 256 single-channel series
    assert "batches of 256 windows (1792 series; the script's: 256 series)" in autotimes[0]["budget"]
    assert leaderboard.gpu_rows(tmp_path / "none.json", tmp_path / "none.json") == []  # no GPU run yet: no rows


def test_table_marks_our_best_and_the_reduced_rows(leaderboard, tmp_path: Path) -> None:
    base = {"protocol": "arnet", "dataset": "ETTh1", "features": "S", "reduced": False}
    rows = [
        {**base, "horizon": 24, "model": "naive", "mse": 0.034, "mae": 0.14},
        {**base, "horizon": 24, "model": "linear", "mse": 0.027, "mae": 0.12, "reduced": True},
        {**base, "horizon": 24, "model": "informer-paper", "mse": 0.010, "mae": 0.1},  # a paper's row is not ours
    ]
    table = leaderboard.markdown(rows)
    assert "| linear | **0.0270** / 0.120 * |" in table and "| naive | 0.0340 / 0.140 |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{leaderboard.README_START}\nold\n{leaderboard.README_END}\nrest\n")
    chart = tmp_path / "results" / "leaderboard.svg"
    leaderboard.write_readme(rows, readme, chart)
    text = readme.read_text()
    assert "old" not in text and "**0.0270**" in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert "](results/leaderboard.svg)" in text  # the chart above the tables, from the same rows
    svg = chart.read_text()
    assert svg.startswith("<?xml") and "arnet protocol: ETTh1 S" in svg and "seasonal naive" not in svg
    assert "last value" in svg and "linear (ridge)" in svg and "informer-paper" in svg
    first = chart.read_bytes()
    leaderboard.write_readme(rows, readme, chart)
    assert chart.read_bytes() == first  # the same rows, the same file


def test_a_row_is_trained_served_evaluated_and_not_rerun(leaderboard, tmp_path: Path, data_dir: Path) -> None:
    out = tmp_path / "board.json"
    argv = ["--protocols", "arnet", "--models", "naive", "--horizons", "24", "--out", str(out)]
    argv += ["--data-dir", str(data_dir), "--work-dir", str(tmp_path / "work")]
    assert leaderboard.main(argv) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["model"] == "naive"]
    assert len(rows) == 1 and set(rows[0]) >= ROW_FIELDS
    # Every test window of the AR-Net setting: the 2,880 test rows less the horizon.
    assert rows[0]["windows"] == 2880 - 24 + 1 and rows[0]["reduced"] is False
    assert 0.03 < rows[0]["mse"] < 0.04  # last value on ETTh1 OT at 24 h (../shared/ANCHORS.md: .0343)
    finished = rows[0]["finished_at"]
    assert leaderboard.main(argv) == 0  # resumed: the finished row is kept, not rerun
    again = [r for r in json.loads(out.read_text())["rows"] if r["model"] == "naive"]
    assert [r["finished_at"] for r in again] == [finished]
    doc = json.loads(out.read_text())  # a row made by code since fixed: --rerun trains it again and replaces it
    [stale] = [r for r in doc["rows"] if r["model"] == "naive"]
    stale["mse"] = 9.0
    out.write_text(json.dumps(doc))
    assert leaderboard.main([*argv, "--rerun"]) == 0
    rerun = [r for r in json.loads(out.read_text())["rows"] if r["model"] == "naive"]
    assert len(rerun) == 1 and rerun[0]["mse"] == rows[0]["mse"]


def test_the_width_search_starts_from_the_trials_finished_rows_record(leaderboard, tmp_path, monkeypatch) -> None:
    """A fresh checkout has no study file: the rows' recorded trials fill it, and no trial trains again."""

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded trial was trained again")

    monkeypatch.setattr(leaderboard, "timed_train", no_training)
    monkeypatch.setattr(leaderboard, "prepare_data", lambda config: None)
    known = [
        {"d_model": 64, "e_layers": 1, "lr": 2e-3, "val_mse": 0.65},
        {"d_model": 32, "e_layers": 2, "lr": 6e-4, "val_mse": 0.97},
        {"d_model": 64, "e_layers": 1, "lr": 2e-3, "val_mse": 0.65},  # the same trial, from another row
    ]
    task = leaderboard.protocol_tasks("informer")[0]
    choice, search = leaderboard.informer_choice(task, False, 2, None, tmp_path, known)
    assert choice == {"d_model": 64, "e_layers": 1, "lr": 2e-3} and len(search["trials"]) == 2


def test_a_resumed_width_search_samples_new_trials(leaderboard, tmp_path, monkeypatch) -> None:
    """Stopped after 2 trials and started again for 4: the new trials are not the first run's draws again (TPE's
    random start with the same seed repeated them, 10 to 47 minutes each for ETTh1 S)."""
    from types import SimpleNamespace

    def fake_training(kind, data, params, train, **kw):
        return SimpleNamespace(fit={"best_val_loss": train.lr * params["d_model"]}), 0.0

    monkeypatch.setattr(leaderboard, "timed_train", fake_training)
    monkeypatch.setattr(leaderboard, "prepare_data", lambda config: SimpleNamespace(config=config))
    task = leaderboard.protocol_tasks("informer")[0]
    leaderboard.informer_choice(task, False, 2, None, tmp_path)
    _, search = leaderboard.informer_choice(task, False, 4, None, tmp_path)
    assert len({tuple(sorted(t.items())) for t in search["trials"]}) == 4


def test_autotimes_rows_come_from_the_run_and_rollout_chosen_on_validation(leaderboard, tmp_path: Path) -> None:
    """Of several bench/autotimes.py runs, the rows are the test scores of the rollout a run chose on validation,
    from the run whose choice scored lowest there; a run that did not choose, or never scored its choice on test,
    is passed over, and runs that chose on different validation windows are refused."""

    def run(
        name: str,
        test: dict[str, float],
        val: dict[str, float],
        choice: str | None,
        stride: int = 4,
        init_from: str | None = None,
        variant: str = "plain",
    ) -> Path:
        def cells(mse: dict[str, float]) -> dict[str, Any]:
            return {
                f"{variant}, {r}": {"per_horizon": {"96": {"mse": m, "mae": m, "windows": 10}}, "average": {"mse": m}}
                for r, m in mse.items()
            }

        training: dict[str, Any] = {"fit": {"best_val_loss": 0.5}, "train_seconds": 7200.0}
        if init_from:
            training.update(init_from=init_from, train_segments=3, train_rollout="sliding", train_seconds=1800.0)
        doc = {
            "command": f"bench/autotimes.py --checkpoint-dir work/{name[0]} --out {name}",
            "bounds": {"epochs": 3, "train_stride": 2, "test_stride": 1},
            "training": {variant: training},
            "accuracy": cells(test),
            "validation": cells(val),
        }
        if name == "b.json":
            doc["machine"] = {"torch_threads": 2}
        if choice:
            doc["rollout_choice"] = {variant: {"chosen": choice, "val_stride": stride}}
        path = tmp_path / name
        path.write_text(json.dumps(doc))
        return path

    worse = run("a.json", {"growing": 0.50, "sliding": 0.49}, {"growing": 1.3, "sliding": 1.2}, "sliding")
    better = run("b.json", {"growing": 0.45, "sliding": 0.47}, {"growing": 1.1, "sliding": 1.15}, "growing")
    untested = run("c.json", {"growing": 0.40}, {"growing": 1.0, "sliding": 0.9}, "sliding")  # sliding not on test
    unchosen = run("d.json", {"growing": 0.30}, {"growing": 0.5}, None)
    assert leaderboard.autotimes_choice([worse, better, untested, unchosen]) == (better, "plain, growing")
    assert leaderboard.autotimes_choice([worse, tmp_path / "missing.json"]) == (worse, "plain, sliding")
    (row,) = leaderboard.autotimes_rows([worse, better, untested])
    assert (row["horizon"], row["mse"]) == (96, 0.45) and row["command"].endswith("--out b.json")
    assert row["reduced"] and "every 2nd training window, every test window" in row["reduced_reasons"][0]
    assert "without the paper's timestamp embeddings" in row["reduced_reasons"][1]
    assert row["budget"] == "3 epochs on 2 torch threads (2.0 h)"
    assert leaderboard.autotimes_rows([unchosen, tmp_path / "missing.json"]) == []
    # a fine-tune of run b: chosen on validation like any run, its starting run's training time counted with its own
    tuned = run("f.json", {"sliding": 0.42}, {"sliding": 1.0}, "sliding", init_from="work/b/plain-k1.pt")
    (row,) = leaderboard.autotimes_rows([worse, better, tuned])
    assert (row["mse"], row["train_seconds"]) == (0.42, 9000.0)
    assert "fine-tuned (3 segments of the sliding rollout) from the run of" in row["reduced_reasons"][2]
    orphan = run("g.json", {"sliding": 0.42}, {"sliding": 1.0}, "sliding", init_from="work/z/plain-k1.pt")
    with pytest.raises(ValueError, match=r"wrote work/z/plain-k1\.pt"):
        leaderboard.autotimes_rows([worse, orphan])
    # a run of the other variant (timestamp embeddings) competes on the same validation rule
    stamped = run("t.json", {"sliding": 0.44}, {"sliding": 1.05}, "sliding", variant="timestamps")
    assert leaderboard.autotimes_choice([worse, better, stamped]) == (stamped, "timestamps, sliding")
    (row,) = leaderboard.autotimes_rows([worse, better, stamped])
    assert (row["mse"], row["train_seconds"]) == (0.44, 7200.0) and "(timestamps, sliding:" in row["reduced_reasons"][0]
    assert len(row["reduced_reasons"]) == 1 and row["budget"].endswith("an unrecorded number of threads (2.0 h)")
    other_windows = run("e.json", {"growing": 0.3}, {"growing": 0.4}, "growing", stride=8)
    with pytest.raises(ValueError, match="different validation windows"):
        leaderboard.autotimes_choice([worse, other_windows])


def test_paired_rebuilds_two_rows_and_compares_them_window_by_window(tmp_path: Path, data_dir: Path) -> None:
    """bench/paired.py refits the AR-Net protocol's naive and seasonal naive rows as the leaderboard did, scores
    their served artifacts on every test window, and tests the difference; a rebuilt model that does not score its
    row's MSE is refused."""
    paired = load_script("bench/paired.py", "paired")
    out = tmp_path / "paired.json"
    argv = ["--protocol", "arnet", "--horizon", "24", "--models", "naive", "seasonal_naive", "--out", str(out)]
    assert paired.main([*argv, "--data-dir", str(data_dir)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mse_a"] == pytest.approx(row["row_mse_a"], rel=1e-3) and row["windows"] > 2500
    assert row["mean_difference"] == pytest.approx(row["mse_a"] - row["mse_b"])
    assert row["ci95"][1] < 0 and row["p_value"] < 0.01  # last value beats the daily season at 24 h on ETTh1 OT
    assert row["check_lag_4h"]["se"] > row["se"] and row["lag"] == 24
    assert paired.main([*argv, "--data-dir", str(data_dir)]) == 0  # a rerun replaces its row
    assert len(json.loads(out.read_text())["rows"]) == 1
    rows = json.loads(paired.leaderboard.DEFAULT_OUT.read_text())["rows"]
    task = paired.leaderboard.protocol_tasks("arnet")[0]
    wrong = {**paired.leaderboard_row(rows, task, "naive"), "mse": 0.05}
    with pytest.raises(SystemExit, match="not the row's model"):
        paired.compare(
            task,
            {"naive": wrong, "seasonal_naive": paired.leaderboard_row(rows, task, "seasonal_naive")},
            str(data_dir),
        )


def test_paired_scores_each_horizon_on_the_windows_it_fits(tmp_path: Path) -> None:
    """AutoTimes' comparison: a horizon's losses come from the windows whose targets lie within the split (as
    bench/autotimes.py scores them), the average from the windows that fit the longest horizon; the CLI names a
    missing checkpoint."""
    paired = load_script("bench/paired.py", "paired")
    values = np.arange(40.0).reshape(20, 2) / 10  # 20 steps x 2 channels
    index = np.arange(0, 12, 2)  # window starts 0, 2, ..., 10; lookback 4
    ours, theirs = np.zeros((6, 8, 2)), np.ones((6, 8, 2))
    losses = paired.horizon_losses(ours, theirs, values, index, (4, 8), 4)
    assert [len(losses[h][0]) for h in ("4", "8", "average")] == [6, 5, 5]  # start 10 + 4 + 8 > 20
    true = values[2 + 4 : 2 + 4 + 8]
    assert losses["8"][0][1] == pytest.approx(np.mean(true**2)) and losses["8"][1][1] == pytest.approx(
        np.mean((1 - true) ** 2)
    )
    assert losses["average"][0][0] == pytest.approx((losses["4"][0][0] + losses["8"][0][0]) / 2)
    recorded = {"per_horizon": {"96": {"mse": 0.4}}, "average": {"mse": 0.42}}
    assert paired.reproduction(recorded, "96", 0.40001) == {"row_mse_a": 0.4, "reproduced": True}
    assert not paired.reproduction(recorded, "96", 0.41)["reproduced"]
    assert paired.reproduction(recorded, "average", 0.5) == {"row_mse_a": 0.42}  # other windows: no check
    with pytest.raises(SystemExit):
        paired.main(["--autotimes-checkpoint", str(tmp_path / "none.pt")])
    with pytest.raises(SystemExit):
        paired.main(["--horizon", "24"])  # no --models


def test_autotimes_ensemble_scores_the_members_mean_forecast(tmp_path: Path, data_dir: Path) -> None:
    """bench/autotimes_ensemble.py: members must be runs it can rebuild (plain, 2 x 512 maps, sliding chosen and
    scored, one checkpoint); each must reproduce its file's scores; the ensemble is the mean of their forecasts."""
    ensemble = load_script("bench/autotimes_ensemble.py", "autotimes_ensemble")
    from forecasting.data import DataConfig, prepare_data

    folder = tmp_path / "ckpt"
    folder.mkdir()
    command = "bench/autotimes.py --variants plain --mlp-hidden-layers 2 --mlp-hidden-dim 512 --test-stride 2"
    run: dict[str, Any] = {
        "command": f"{command} --checkpoint-dir {folder}",
        "rollout_choice": {"plain": {"chosen": "sliding", "val_stride": 4}},
        "accuracy": {"plain, sliding": {}},
    }
    ensemble.check_member(tmp_path, run)
    with pytest.raises(ValueError, match="needs --mlp-hidden-dim 512"):
        ensemble.check_member(tmp_path, {**run, "command": run["command"].replace("dim 512", "dim 256")})
    with pytest.raises(ValueError, match="sliding rollout"):
        ensemble.check_member(tmp_path, {**run, "rollout_choice": {"plain": {"chosen": "growing"}}})
    with pytest.raises(ValueError, match="found 0"):
        ensemble.member_checkpoint(run)
    (folder / "plain-k1-lr0.001.pt").touch()
    assert ensemble.member_checkpoint(run) == folder / "plain-k1-lr0.001.pt"
    with pytest.raises(ValueError, match="no checkpoint"):
        ensemble.member_checkpoint({"command": command})

    # Two members whose cached forecasts are the truth plus and minus 0.1: each scores 0.01, their mean 0.
    prepared = prepare_data(DataConfig(dataset="ETTh1", features="M", lookback=672, horizon=96))
    work, members = tmp_path / "work", []
    for name, offset in (("a", 0.1), ("b", -0.1)):
        member = tmp_path / f"{name}.json"
        recorded: dict[str, Any] = {}
        for split, key in (("val", "validation"), ("test", "accuracy")):
            values = getattr(prepared, split).values
            if split == "val":
                index = ensemble.choice_windows(prepared.val, 4, 0)
            else:
                index = ensemble.scored_windows(prepared.test, 2, None, 0)
            padded = np.concatenate([values, np.zeros((720, values.shape[1]), values.dtype)])
            truth = np.stack([padded[i + 672 : i + 672 + 720] for i in index])
            work.mkdir(exist_ok=True)
            np.save(work / f"{name}-{split}.npy", (truth + offset).astype(np.float32))
            recorded[key] = {"plain, sliding": {"average": {"mse": 0.01}}}
        member.write_text(json.dumps({**run, **recorded, "baselines": {"linear": {}}}))
        members.append(str(member))
    out = tmp_path / "ensemble.json"
    assert ensemble.main(["--members", *members, "--work-dir", str(work), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["ensemble"]["test"]["average"]["mse"] == pytest.approx(0, abs=1e-10)
    assert result["members"][members[0]]["val"]["average"]["mse"] == pytest.approx(0.01, rel=1e-4)
    assert result["windows"] == {"val": 697, "test": 1393} and "linear" in result["baselines"]
    doc = json.loads(Path(members[1]).read_text())
    doc["accuracy"]["plain, sliding"]["average"]["mse"] = 0.02  # the file says otherwise: not this checkpoint
    Path(members[1]).write_text(json.dumps(doc))
    with pytest.raises(SystemExit, match="not the run's"):
        ensemble.main(["--members", *members, "--work-dir", str(work), "--out", str(out)])
    with pytest.raises(SystemExit):
        ensemble.main(["--members", members[0]])  # one run is no ensemble
