"""ClassificationHead: a linear probe or a shallow MLP on pooled tokens, its arguments checked at once."""

import pytest
import torch
from torch import nn

from brainfm_lightning.models import ClassificationHead


def test_zero_hidden_features_is_one_linear_layer():
    head = ClassificationHead(48, 3)
    assert [type(layer) for layer in head] == [nn.Linear]
    pooled = torch.randn(5, 48)
    assert torch.equal(head(pooled), head[0](pooled))


def test_hidden_features_make_an_mlp_whose_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    head = ClassificationHead(48, 1, hidden_features=16, dropout=0.1)
    assert [type(layer) for layer in head] == [nn.LayerNorm, nn.Linear, nn.GELU, nn.Dropout, nn.Linear]
    assert (head[1].out_features, head[3].p, head[4].out_features) == (16, 0.1, 1)
    outputs = head(torch.randn(5, 48))
    outputs.sum().backward()
    assert outputs.shape == (5, 1) and torch.isfinite(outputs).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [(dict(in_features=0), "in_features and out_features must be >= 1"),
     (dict(hidden_features=-1), "hidden_features >= 0, got 48, 2, -1"),
     (dict(hidden_features=8, dropout=1.0), r"dropout must lie in \[0, 1\), got 1.0"),
     (dict(dropout=0.2), "dropout=0.2 needs an MLP head")],
)
def test_bad_arguments_fail_naming_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClassificationHead(**{"in_features": 48, "out_features": 2, **kwargs})
