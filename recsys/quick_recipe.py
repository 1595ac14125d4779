"""The small PRORec recipe that the demo and the recommend notebook train: a Beauty slice in minutes of one CPU
(and the SASRec the demo serves beside it, PRORec's stage 1 alone).

Chosen against the earlier one (256-code levels, 3 SASRec epochs, a width-128 token-level generator for 3 epochs),
on the same slice: test Recall@10 .152 against .067, and 130 distinct items in 300 users' top-5 lists against 65
(the earlier model showed nearly the same popular items to everyone). Why each setting:
- 16 codes a level for 500 items: with 256 nearly every item had a first-level code of its own, so the generator
  learnt 500 unrelated classes and fell back on popularity;
- SASRec 10 epochs: its validation NDCG@10 is .064 after 10 and .010 after 3, and its item vectors are the codes'
  collaborative half;
- the item-level encoder at width 64 makes a step about 4x cheaper, which buys 15 epochs in the same time.
"""

from __future__ import annotations

from pathlib import Path

QUICK_SLICE = {"top_items": 500, "max_users": 4000}


def quick_train_args(out: Path | str) -> list[str]:
    """``python -m recsys`` arguments that train the recipe into the run folder ``out``."""
    return [
        "train",
        *("--dataset", "beauty", "--variant", "prorec"),
        *("--slice-items", str(QUICK_SLICE["top_items"]), "--slice-users", str(QUICK_SLICE["max_users"])),
        *("--sasrec-epochs", "10"),
        *("--levels", "16", "16", "16", "--rqvae-steps", "2000"),  # 500 items settle in a few thousand steps
        *("--d-model", "64", "--heads", "2", "--d-ff", "256", "--encoder-unit", "item"),
        *("--epochs", "15", "--lr", "3e-3", "--eval-users", "1000"),
        *("--out", str(out)),
    ]


def quick_sasrec_args(out: Path | str) -> list[str]:
    """``python -m recsys`` arguments that train the SASRec of the same slice (aligned with the titles, the
    recipe's stage 1) into the run folder ``out``."""
    return [
        "train",
        *("--dataset", "beauty", "--variant", "sasrec"),
        *("--slice-items", str(QUICK_SLICE["top_items"]), "--slice-users", str(QUICK_SLICE["max_users"])),
        *("--sasrec-epochs", "10"),
        *("--out", str(out)),
    ]


def quick_transitions_args(out: Path | str) -> list[str]:
    """``python -m recsys`` arguments that fit item-to-item transitions on the same slice (seconds: the bar the
    trained recommenders must clear) into the run folder ``out``."""
    return [
        "train",
        *("--dataset", "beauty", "--variant", "transitions"),
        *("--slice-items", str(QUICK_SLICE["top_items"]), "--slice-users", str(QUICK_SLICE["max_users"])),
        *("--out", str(out)),
    ]
