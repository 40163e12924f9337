"""The examples in the public entry points' docstrings run and print what they say (doctest), so a
newcomer's first copy-paste works."""
import doctest
import os

import numpy as np
import pytest
import torch

from sgan import crf, losses, ops, pipeline
from sgan.models import attention as attention_module
from sgan.models.checkpoint import StripMaxPool2d, StripWeightGradConv2d, relu_keeping_mask_

ENTRY_POINTS = [
    losses.seed_loss, losses.balanced_seed_loss, losses.classification_loss, losses.boundary_loss,
    crf.dense_crf, attention_module.SaliencyGuidedAttention, ops.saliency_attention, ops.attention_column,
    pipeline.load_config, StripWeightGradConv2d, StripMaxPool2d, relu_keeping_mask_,
]
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("entry_point", ENTRY_POINTS, ids=lambda f: f.__qualname__)
def test_docstring_example_runs(entry_point, monkeypatch):
    monkeypatch.chdir(REPOSITORY)   # the examples name configs/ relative to the repository, as the README does
    finder = doctest.DocTestFinder(recurse=False)
    globs = {"torch": torch, "np": np, entry_point.__name__: entry_point}
    tests = finder.find(entry_point, entry_point.__name__, globs=globs)
    assert tests and tests[0].examples, f"{entry_point.__qualname__}: the docstring has no example"
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    assert runner.failures == 0, f"{entry_point.__qualname__}: {runner.failures} example(s) failed (output above)"
