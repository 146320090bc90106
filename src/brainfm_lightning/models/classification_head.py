"""Session-level prediction from pooled encoder tokens: a linear probe or a shallow MLP (plain torch)."""

from __future__ import annotations

from torch import nn


class ClassificationHead(nn.Sequential):
    """``Linear`` (a linear probe), or ``LayerNorm, Linear, GELU, Dropout, Linear`` with ``hidden_features > 0``.

    Args:
        in_features: Width of the pooled tokens (the encoder's ``embed_dim``).
        out_features: Outputs: the classes of a multiclass task, 1 for a binary logit or a regression value.
        hidden_features: Width of the MLP's hidden layer; 0 for a linear head.
        dropout: Dropout on the hidden layer (MLP only).

    Raises:
        ValueError: A width below 1 (``hidden_features`` below 0), ``dropout`` outside ``[0, 1)``, or dropout on a
            linear head, which has no hidden layer to drop.
    """

    def __init__(self, in_features: int, out_features: int, hidden_features: int = 0, dropout: float = 0.0) -> None:
        if in_features < 1 or out_features < 1 or hidden_features < 0:
            raise ValueError(f"in_features and out_features must be >= 1 and hidden_features >= 0, got "
                             f"{in_features}, {out_features}, {hidden_features}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if dropout and not hidden_features:
            raise ValueError(f"dropout={dropout} needs an MLP head (hidden_features > 0); a linear head has no "
                             "hidden layer")
        if not hidden_features:
            super().__init__(nn.Linear(in_features, out_features))
        else:
            super().__init__(nn.LayerNorm(in_features), nn.Linear(in_features, hidden_features), nn.GELU(),
                             nn.Dropout(dropout), nn.Linear(hidden_features, out_features))
        self.in_features, self.out_features = in_features, out_features
