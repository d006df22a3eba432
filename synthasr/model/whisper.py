"""Whisper's audio encoder as a transducer encoder: pretrained real-speech acoustics for the RNN-T.

The layout follows OpenAI's Whisper (conv stem -> sinusoidal positions -> pre-LN transformer blocks ->
final LayerNorm) so its weights load one-to-one (see :mod:`synthasr.model.pretrained`), with two
deliberate differences:

* **variable-length input**: Whisper always sees 30 s (zero-padded audio, 1500 positions); here the
  positional table is sliced to the input length, so a 3 s utterance costs 3 s of compute;
* **batches of unequal lengths**: padded frames are zeroed between the convolutions and masked as
  attention keys, so an utterance's output does not depend on what else is in its batch.

Submodule names keep the freeze patterns of :mod:`synthasr.train.freeze` meaningful: ``encoder.embed``
(the conv stem), ``encoder.layers.N`` (blocks, ranges like ``encoder.layers.0-2``), ``encoder.final_norm``.
An optional ``extra_subsampling=2`` merges frame pairs after the encoder (50 -> 25 frames/s); it is
initialised to the pair average so the pretrained representation is unchanged at the start.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from synthasr.model.encoder import make_pad_mask


def whisper_stem_lengths(x_lens: torch.Tensor) -> torch.Tensor:
    """Frames after the stem: conv1 keeps T, conv2 (k3, stride 2, pad 1) gives ``(T - 1) // 2 + 1``."""
    return torch.div(x_lens - 1, 2, rounding_mode="floor") + 1


def whisper_sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's fixed positional table (sin half, then cos half): (length, channels)."""
    if channels % 2:
        raise ValueError(f"Whisper positional table needs an even width, got {channels}")
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class WhisperConvStem(nn.Module):
    """conv1 (k3, pad 1) + GELU, conv2 (k3, stride 2, pad 1) + GELU: (B, T, F) -> (B, T', D)."""

    def __init__(self, n_mels: int, n_state: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        keep = (~pad_mask).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        x = x.transpose(1, 2) * keep  # padded frames look like conv1's own zero padding
        x = F.gelu(self.conv1(x)) * keep  # so conv2 never sees GELU(bias) from padding
        return F.gelu(self.conv2(x)).transpose(1, 2)


class WhisperSelfAttention(nn.Module):
    """Multi-head self-attention with fused q/k/v (Whisper's key has no bias: it cancels in softmax)."""

    def __init__(self, n_state: int, n_head: int, dropout: float) -> None:
        super().__init__()
        if n_state % n_head:
            raise ValueError(f"Whisper width {n_state} is not divisible by {n_head} heads")
        self.n_head = n_head
        self.qkv = nn.Linear(n_state, 3 * n_state)
        self.out = nn.Linear(n_state, n_state)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, keep_keys: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep_keys,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(out.transpose(1, 2).reshape(b, t, d))


class WhisperBlock(nn.Module):
    """Pre-LN residual block: x + attn(LN(x)), then x + MLP(LN(x)) with a 4x GELU MLP."""

    def __init__(self, n_state: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(n_state)
        self.attn = WhisperSelfAttention(n_state, n_head, dropout)
        self.ffn_norm = nn.LayerNorm(n_state)
        self.ffn = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep_keys: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), keep_keys))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class FramePairMerge(nn.Module):
    """Concatenate frame pairs and project back to D (50 -> 25 frames/s); starts as the pair mean."""

    def __init__(self, n_state: int) -> None:
        super().__init__()
        self.proj = nn.Linear(2 * n_state, n_state)
        with torch.no_grad():
            eye = torch.eye(n_state) / 2
            self.proj.weight.copy_(torch.cat([eye, eye], dim=1))
            self.proj.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        x = F.pad(x, (0, 0, 0, t % 2))  # odd length: the last frame pairs with a zero frame
        return self.proj(x.reshape(b, -1, 2 * d))


class WhisperEncoder(nn.Module):
    """(B, T, n_mels) Whisper log-mel -> (B, T', n_state); T' = ceil(T / 2) (/ 2 again with extra subsampling)."""

    def __init__(self, n_mels: int, n_state: int, n_head: int, n_layer: int, n_ctx: int = 1500,
                 extra_subsampling: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if extra_subsampling not in (1, 2):
            raise ValueError(f"extra_subsampling must be 1 or 2, got {extra_subsampling}")
        self.d_model = n_state
        self.n_ctx = n_ctx
        self.extra_subsampling = extra_subsampling
        self.embed = WhisperConvStem(n_mels, n_state)
        # A buffer, not a parameter: Whisper never trains its positional table. Persistent, so a
        # synthasr checkpoint carries it and decoding never needs the original weights file.
        self.register_buffer("positional_embedding", whisper_sinusoids(n_ctx, n_state))
        self.layers = nn.ModuleList(WhisperBlock(n_state, n_head, dropout) for _ in range(n_layer))
        self.final_norm = nn.LayerNorm(n_state)
        self.frame_merge = FramePairMerge(n_state) if extra_subsampling == 2 else None

    def output_lengths(self, x_lens: torch.Tensor) -> torch.Tensor:
        lengths = whisper_stem_lengths(x_lens)
        if self.extra_subsampling == 2:
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
        return lengths

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(x, make_pad_mask(x_lens, x.size(1)))
        t = x.size(1)
        if t > self.n_ctx:
            raise ValueError(f"Whisper encoder input of {t} frames after the stem exceeds its {self.n_ctx} "
                             f"positions ({self.n_ctx * 0.02:.0f} s); split the audio into shorter chunks")
        lengths = whisper_stem_lengths(x_lens)
        pad_mask = make_pad_mask(lengths, t)
        keep_keys = (~pad_mask)[:, None, None, :]  # (B, 1, 1, T') for scaled_dot_product_attention
        x = x + self.positional_embedding[:t].to(x.dtype)
        for layer in self.layers:
            x = layer(x, keep_keys)
        x = self.final_norm(x).masked_fill(pad_mask.unsqueeze(-1), 0.0)
        if self.frame_merge is not None:
            x = self.frame_merge(x)
            lengths = torch.div(lengths + 1, 2, rounding_mode="floor")
            x = x.masked_fill(make_pad_mask(lengths, x.size(1)).unsqueeze(-1), 0.0)
        return x, lengths
