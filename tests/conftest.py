"""Shared fixtures: the real benchmark data folder, found the same way the product finds it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ARCAST_NO_DOWNLOAD", "1")


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs one worker more than the cores, up to 4), each worker's torch gets its
    share of the cores (at least one thread) instead of all of them: two workers with two threads each on two cores
    were oversubscribed."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from arcast_core.data_dir import find_data_dir

    path = find_data_dir()
    if not (path / "ETT" / "ETTh1.csv").is_file():
        pytest.fail(f"benchmark data not found at {path}: set ARCAST_DATA_DIR to the shared data folder")
    return path


@pytest.fixture(scope="session")
def etth1_slice(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 2000 rows of the real ETTh1 file, as a CSV of our own (70/10/20 split)."""
    import polars as pl

    path = tmp_path_factory.mktemp("data") / "etth1_slice.csv"
    pl.read_csv(data_dir / "ETT/ETTh1.csv").head(2000).write_csv(path)
    return path


@pytest.fixture(scope="session")
def arnet_run(etth1_slice: Path):
    """A small AR-Net trained on the ETTh1 slice (univariate OT): lookback 48, 12 values per step."""
    from arcast_core.training import TrainConfig
    from forecasting.data import DataConfig
    from forecasting.runs import train_run

    return train_run(
        "arnet",
        DataConfig(dataset=str(etth1_slice), features="S", target="OT", lookback=48, horizon=12),
        {"hidden_sizes": [16]},
        TrainConfig(epochs=4, batch_size=64, lr=3e-3, progress=False),
    )


@pytest.fixture(scope="session")
def model_store(arnet_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding the AR-Net above as ``etth1-arnet`` version 1."""
    from forecasting.export import export_run

    store = tmp_path_factory.mktemp("store")
    export_run(arnet_run, store, "etth1-arnet", max_horizon=120)
    return store


@pytest.fixture(scope="session")
def amazon_data_dir(data_dir: Path) -> Path:
    """The same data folder; the Amazon sets sit beside the ETT files."""
    return data_dir


@pytest.fixture(scope="session")
def beauty(amazon_data_dir: Path):
    """Amazon Beauty 5-core sequences (recommendation tests)."""
    from recsys.data import load_dataset

    return load_dataset("beauty", amazon_data_dir)


@contextmanager
def _single_threaded() -> Iterator[None]:
    import threadpoolctl
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpoolctl.threadpool_limits(limits=1):
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch/BLAS thread for the module: on a shared 2-core CPU, two contending threads were measured 10-20x
    slower for the small recommendation models."""
    with _single_threaded():
        yield


_DONE = ".complete"  # written last: the shared folder is whole


def _built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder built once for the whole test run. Session fixtures are per pytest-xdist worker, so each worker
    used to train and export the same recommenders again; now the first worker to ask builds the folder under a
    lock and the others wait for it and read it (each then loads the same files, so every worker tests one model)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, shared by its workers
    folder = root / f"shared-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / _DONE).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a half-built folder of a worker that died
            with _single_threaded():
                build(folder)
            (folder / _DONE).touch()
    return folder


@pytest.fixture(scope="session")
def beauty_slice_run(beauty, tmp_path_factory: pytest.TempPathFactory):
    """recsys.smoke_run's generator on the dense Beauty slice, as (split, run). Trained once per test run: the
    recommendation export, batch, service and notebook tests all read it."""
    from recsys.prorec_training import load_run, save_run
    from recsys.smoke_run import smoke_slice, train_smoke_run

    folder = _built_once(
        tmp_path_factory, "beauty-slice-run", lambda f: save_run(train_smoke_run(beauty.sequences)[1], f)
    )
    return smoke_slice(beauty.sequences)[1], load_run(folder)


@pytest.fixture(scope="session")
def beauty_slice_artifact(beauty_slice_run, tmp_path_factory: pytest.TempPathFactory):
    """The run above exported to a store of its own as ``beauty-slice`` (read-only: tests copy it to change it)."""
    from recsys.export import export_run
    from serving.artifact import read_artifact, resolve

    split, run = beauty_slice_run
    histories = split.validation.histories[:48]
    store = _built_once(
        tmp_path_factory, "recsys-store", lambda f: export_run(run, f, "beauty-slice", histories=histories)
    )
    return read_artifact(resolve(store, "beauty-slice"))


@pytest.fixture(scope="session")
def beauty_sasrec_run(beauty, tmp_path_factory: pytest.TempPathFactory):
    """A small SASRec on the same Beauty slice (recsys.smoke_run's), as (split, run): the served item_scores kind."""
    from recsys.prorec_training import Stage1Config
    from recsys.sasrec_run import load_sasrec_run, save_sasrec_run, train_sasrec_run
    from recsys.smoke_run import SMOKE_SLICE, smoke_slice

    sliced, split = smoke_slice(beauty.sequences)

    def build(folder: Path) -> None:
        run = train_sasrec_run("beauty", sliced, Stage1Config(hidden=32, epochs=3), progress=False)
        run.info["data"] = {"dataset": "beauty", "slice": SMOKE_SLICE}
        run.titles = ["", *(f"item {raw}" for raw in run.item_ids[1:])]  # placeholders, as the smoke generator's
        save_sasrec_run(run, folder)

    return split, load_sasrec_run(_built_once(tmp_path_factory, "beauty-sasrec-run", build))


@pytest.fixture(scope="session")
def beauty_sasrec_artifact(beauty_sasrec_run, tmp_path_factory: pytest.TempPathFactory):
    """The SASRec above exported to a store of its own as ``beauty-sasrec`` (read-only, as the one above)."""
    from recsys.sasrec_export import export_sasrec_run
    from serving.artifact import read_artifact, resolve

    split, run = beauty_sasrec_run
    histories = split.validation.histories[:48]
    store = _built_once(
        tmp_path_factory, "sasrec-store", lambda f: export_sasrec_run(run, f, "beauty-sasrec", histories=histories)
    )
    return read_artifact(resolve(store, "beauty-sasrec"))
