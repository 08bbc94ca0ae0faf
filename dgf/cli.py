"""The console scripts of ``[project.scripts]`` (pyproject.toml), and
:func:`parsers`, every command's argument parser by command name (what the docs'
tests parse their command lines with). The commands live in :mod:`dgf.commands`.
"""
from __future__ import annotations

import argparse

from dgf.commands.data import build_hdf5_main, build_hdf5_parser, make_pairs_main, make_pairs_parser
from dgf.commands.evaluation import eval_main, eval_parser
from dgf.commands.inference import (deblur_main, deblur_parser, export_main, export_parser,
                                    info_main, info_parser)
from dgf.commands.training import train_main, train_parser

__all__ = ["build_hdf5_main", "make_pairs_main", "train_main", "eval_main", "deblur_main",
           "export_main", "info_main", "parsers"]

_PARSERS = {
    "build-hdf5": build_hdf5_parser,
    "dgf-make-pairs": make_pairs_parser,
    "dgf-train": train_parser,
    "dgf-eval": eval_parser,
    "dgf-deblur": deblur_parser,
    "dgf-export": export_parser,
    "dgf-info": info_parser,
}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """{command name: its argparse parser}, for every console script; building them
    imports no TensorFlow."""
    return {name: build() for name, build in _PARSERS.items()}
