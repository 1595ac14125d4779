"""The ``tune`` commands' options for sharing one study between workers (no optuna import: ``--help`` stays quick)."""

from __future__ import annotations

import argparse


def add_worker_args(parser: argparse.ArgumentParser) -> None:
    """The ``tune`` command's options for sharing one study between worker processes."""
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing --trials (default 1)")
    parser.add_argument("--heartbeat", type=int, default=30, help="seconds between a running trial's heartbeats")
    parser.add_argument(
        "--grace", type=int, default=120, help="seconds without a heartbeat before a trial is failed and retried"
    )
