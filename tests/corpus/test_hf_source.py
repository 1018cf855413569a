"""hf_function finds transformers' own function under each wrapper style transformers has used."""

from __future__ import annotations

import functools
import types

import pytest
import torch
from transformers.models.qwen3_next import modeling_qwen3_next

from corpus.hf_source import hf_function

NAME = "torch_recurrent_gated_delta_rule"


def _module_with(**members) -> types.ModuleType:
    """A stand-in modeling module whose ``__file__`` is the real modeling file."""
    fake = types.ModuleType("fake_modeling")
    fake.__file__ = modeling_qwen3_next.__file__
    for name, value in members.items():
        setattr(fake, name, value)
    return fake


def test_finds_the_installed_transformers_function():
    fn = hf_function(modeling_qwen3_next, NAME)
    assert isinstance(fn, types.FunctionType) and fn.__name__ == NAME
    assert fn.__code__.co_filename == modeling_qwen3_next.__file__
    assert "torch" in fn.__globals__


def test_sees_through_functools_wraps_and_module_closures():
    real = hf_function(modeling_qwen3_next, NAME)

    @functools.wraps(real)
    def wrapped(*args, **kwargs):  # the <= 5.24 style: functools.wraps
        return real(*args, **kwargs)

    def make_module(func):  # the 5.25 style: an nn.Module whose forward closes over the wrapper
        class Func(torch.nn.Module):
            def forward(self, *args, **kwargs):
                return func(*args, **kwargs)
        return Func()

    assert hf_function(_module_with(**{NAME: wrapped}), NAME) is real
    assert hf_function(_module_with(**{NAME: make_module(wrapped)}), NAME) is real


def test_a_wrapper_hiding_the_function_is_a_clear_error():
    def opaque(*args):
        return None

    with pytest.raises(LookupError, match="no wrapper of function leads to"):
        hf_function(_module_with(**{NAME: opaque}), NAME)
