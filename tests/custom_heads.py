"""A user-defined head, as README's "Custom heads" shows: dropout + linear over the pooled
output of a BERT encoder. Used as ``model.head=custom_heads:PooledDropoutLinear``; Ray
workers import it by that path."""

from torch import nn

from raylm.models import ClassificationHead


class PooledDropoutLinear(ClassificationHead):
    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__(hidden_size, num_labels, dropout)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states, attention_mask, pooled_output):
        if pooled_output is None:
            raise ValueError("PooledDropoutLinear needs an encoder with a pooler (BERT)")
        return self.out(self.dropout(pooled_output))
