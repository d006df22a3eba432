"""Prediction networks: stateless (embedding + depthwise conv over the last tokens) and LSTM.

Both expose the same small step API used by the searches, so greedy and beam search never branch on
the decoder type:

* ``start(batch, device) -> (out (N, D), state)``: the output after the start-of-sequence (blank).
* ``step(tokens (N,), state) -> (out (N, D), state)``: feed one new token per row.
* ``select_state(state, index)`` / ``scatter_state(state, index, sub)``: gather/overwrite rows.

For the stateless decoder the state is simply the last ``context_size`` tokens (N, context_size).
The blank embedding is fixed at zero (``padding_idx``), so training's left zero-padding and decoding's
``[blank, blank]`` start context are the same thing.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class StatelessDecoder(nn.Module):
    """Embedding + depthwise Conv1d over ``context_size`` tokens + ReLU (icefall's stateless decoder)."""

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int = 0, context_size: int = 2) -> None:
        super().__init__()
        self.blank_id = blank_id
        self.context_size = context_size
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim, padding_idx=blank_id)
        self.conv = (
            nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size, groups=decoder_dim, bias=False)
            if context_size > 1
            else None
        )

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """(B, U) int64 -> (B, U, D); with ``need_pad=False`` y must hold exactly context_size tokens/row
        and the output has U=1 (the decoding/ONNX form)."""
        emb = self.embedding(y.clamp(min=0))
        if self.conv is not None:
            emb = emb.permute(0, 2, 1)
            if need_pad:
                emb = F.pad(emb, (self.context_size - 1, 0))
            emb = self.conv(emb).permute(0, 2, 1)
        return F.relu(emb)

    def start(self, batch: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
        state = torch.full((batch, self.context_size), self.blank_id, dtype=torch.int64, device=device)
        return self.forward(state, need_pad=False)[:, -1], state

    def step(self, tokens: torch.Tensor, state: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        state = torch.cat([state[:, 1:], tokens.unsqueeze(1)], dim=1)
        return self.forward(state, need_pad=False)[:, -1], state

    @staticmethod
    def select_state(state: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return state.index_select(0, index)

    @staticmethod
    def scatter_state(state: torch.Tensor, index: torch.Tensor, sub: torch.Tensor) -> torch.Tensor:
        return state.index_copy(0, index, sub)


class LstmDecoder(nn.Module):
    """Embedding + LSTM prediction network (the original RNN-T); state is (h, c)."""

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int = 0, num_layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.blank_id = blank_id
        self.context_size = 1
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim, padding_idx=blank_id)
        self.lstm = nn.LSTM(decoder_dim, decoder_dim, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)

    def forward(self, y: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """(B, U) -> (B, U, D); ``need_pad`` is accepted for interface parity and ignored."""
        out, _ = self.lstm(self.embedding(y.clamp(min=0)))
        return out

    def start(self, batch: int, device: torch.device):
        zeros = torch.zeros(self.lstm.num_layers, batch, self.lstm.hidden_size, device=device)
        blank = torch.full((batch,), self.blank_id, dtype=torch.int64, device=device)
        return self.step(blank, (zeros, zeros.clone()))

    def step(self, tokens: torch.Tensor, state):
        out, (h, c) = self.lstm(self.embedding(tokens).unsqueeze(1), state)
        return out[:, 0], (h, c)

    @staticmethod
    def select_state(state, index: torch.Tensor):
        return state[0].index_select(1, index), state[1].index_select(1, index)

    @staticmethod
    def scatter_state(state, index: torch.Tensor, sub):
        return state[0].index_copy(1, index, sub[0]), state[1].index_copy(1, index, sub[1])
