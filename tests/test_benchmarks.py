"""The benchmark scripts stay runnable: each imports and parses its arguments against the current
library (a refactor once broke one silently), and the real-photo metric is checked by hand."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_each_benchmark_imports_and_shows_its_help(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_agreement_is_the_share_of_top_k_slots_with_the_query_label():
    spec = importlib.util.spec_from_file_location("real_photo_quality", BENCHMARKS[0].parent / "real_photo_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Two tight clusters on the axes, one item of cluster "a" mislabelled "b"; k = 2 (self excluded).
    vectors = np.array([[1, 0], [0.99, 0.1], [0.98, 0.2], [0, 1], [0.1, 0.99], [0.2, 0.98]], dtype=np.float32)
    labels = np.array(["a", "a", "b", "b", "b", "b"], dtype=object)
    # a-items 0 and 1 each see one "a" and one "b" neighbour: 1/2 each; item 2 ("b") sees two "a": 0;
    # the b-cluster items see only b: 1 each → (0.5 + 0.5 + 0 + 1 + 1 + 1) / 6.
    assert module.agreement(vectors, labels, k=2) == pytest.approx(4 / 6)


def test_a_recipe_is_a_name_and_its_train_overrides():
    import argparse

    spec = importlib.util.spec_from_file_location("real_photo_quality", BENCHMARKS[0].parent / "real_photo_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_recipe("crops:crop_scale=0.4,image_positive=0.5") == (
        "crops", ["crop_scale=0.4", "image_positive=0.5"])
    assert module.parse_recipe("shipped:") == ("shipped", [])
    for bad in ("crops:crop_scale", ":crop_scale=0.4"):
        with pytest.raises(argparse.ArgumentTypeError, match="NAME:KEY=VALUE"):
            module.parse_recipe(bad)
