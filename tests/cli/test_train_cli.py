"""`adrank train`'s flags are TrainConfig's (adrank/core/train_config.py), with nothing added but the
input, the outputs and the codebook sizes."""

from __future__ import annotations

import argparse
import dataclasses

from adrank.cli.main import build_parser
from adrank.core.train_config import TrainConfig


def test_train_command_flags_are_the_config_fields():
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices["train"]
    dests = {a.dest for a in p._actions} - {"help"}
    fields = {f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata}
    assert fields <= dests
    assert dests - fields == {"data", "out", "test_out", "cache_dir", "codebooks", "codewords", "candidates"}
    args = p.parse_args(["--dataset", "avazu", "--data", "D", "--model", "lr", "--out", "R"])
    assert all(getattr(args, f.name) == f.default for f in dataclasses.fields(TrainConfig)
               if "help" in f.metadata and f.name not in ("dataset", "model"))
