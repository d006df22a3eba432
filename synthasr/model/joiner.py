"""Joiner: ``output_linear(tanh(encoder_proj(enc) + decoder_proj(dec)))`` (icefall naming)."""
from __future__ import annotations

import torch
import torch.nn as nn


class Joiner(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        """Broadcasting add of the two inputs; ``project_input=False`` when they are already projected
        (pruned loss and the searches project once and reuse)."""
        if project_input:
            encoder_out = self.encoder_proj(encoder_out)
            decoder_out = self.decoder_proj(decoder_out)
        return self.output_linear(torch.tanh(encoder_out + decoder_out))
