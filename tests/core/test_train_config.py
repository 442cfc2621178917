"""adrank/core/train_config.py: one definition of every training default, the command line generated
from it (the `adrank train` command uses exactly this: tests/cli/test_train_cli.py)."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from adrank.core.train_config import TrainConfig, add_arguments, from_args


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--out")
    add_arguments(p, required=("dataset", "model"))
    return p


def test_every_documented_field_is_a_flag_with_the_dataclass_default():
    p = _train_parser()
    args = p.parse_args(["--dataset", "synthetic", "--data", "D", "--model", "dplr", "--out", "R"])
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        assert hasattr(args, f.name), f"no flag for {f.name}"
        if f.name not in ("dataset", "model"):
            assert getattr(args, f.name) == f.default, f.name
    cfg = from_args(args)
    want = TrainConfig(dataset="synthetic", model="dplr")
    assert cfg == want  # parsing no option gives exactly the dataclass defaults


def test_flags_parse_to_typed_fields():
    p = _train_parser()
    args = p.parse_args(["--dataset", "criteo", "--data", "D", "--model", "pruned", "--out", "R", "--rank", "3",
                         "--lr", "0.02", "--emb-reg", "1e-3", "--no-finetune", "--quiet", "--split", "random",
                         "--tune", "4", "--interaction-init", "small"])
    cfg = from_args(args)
    assert (cfg.rank, cfg.lr, cfg.emb_reg, cfg.finetune, cfg.progress, cfg.split, cfg.tune) == \
        (3, 0.02, 1e-3, False, False, "random", 4)
    assert cfg.interaction_init == "small" and isinstance(cfg.rank, int) and isinstance(cfg.lr, float)
    with pytest.raises(SystemExit):
        p.parse_args(["--dataset", "criteo", "--data", "D", "--model", "ffm", "--out", "R"])


def test_required_and_skipped_fields():
    p = argparse.ArgumentParser()
    add_arguments(p, required=("dataset",), skip=("tune",))
    with pytest.raises(SystemExit):
        p.parse_args([])
    args = p.parse_args(["--dataset", "avazu"])
    assert not hasattr(args, "tune") and args.dataset == "avazu"


def test_validation_names_the_problem():
    for bad, match in ((dict(model="dplr"), "rank"), (dict(model="lr", rank=2), "takes no rank"),
                       (dict(model="fm", lr=0.0), "lr must be > 0"), (dict(model="fm", emb_reg=-1.0), "emb_reg"),
                       (dict(model="lr", embedding="lightfm"), "no embeddings"),
                       (dict(model="fm", split="time"), "split must be")):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad).validate()
    assert TrainConfig(dataset="criteo").split_kind() == "ordered"
    assert TrainConfig(dataset="movielens").split_kind() == "random"
    assert TrainConfig(dataset="criteo", split="random").split_kind() == "random"
