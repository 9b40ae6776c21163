"""The examples people copy run (on a tiny budget), take the explicit algorithms, and check themselves against autograd."""

from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path

import pytest

import dbpaper

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("wgan_gp", ["--steps", "3", "--critic-steps", "2", "--batch", "32", "--check"]),
        ("r1_stylegan_like", ["--steps", "3", "--batch", "8", "--r1-every", "2", "--check"]),
    ],
)
def test_the_gan_examples_run_on_the_explicit_algorithms(name, argv, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error", dbpaper.FallbackWarning)
        result = _load(name).main(argv)
    assert result and all(math.isfinite(v) for v in result.values())
    assert "check:" in capsys.readouterr().out
