"""Conformer encoder: conv2d subsampling (x4), relative-position self-attention, macaron FFNs.

Everything here is written to export with ``torch.onnx.export`` and a dynamic time axis: lengths,
masks and relative positions are computed with tensor ops, never with Python branches on tensor
values. Padded frames are masked in attention and zeroed before the depthwise convolution, so an
utterance's output does not depend on what else is in its batch (checked in tests).
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_INPUT_FRAMES = 7  # smallest T with subsampled_lengths(T) >= 1


def subsampled_lengths(x_lens: torch.Tensor) -> torch.Tensor:
    """Output length of :class:`Conv2dSubsampling`: two unpadded 3x3 stride-2 convs.

    Each conv maps L to ``(L - 3) // 2 + 1 == (L - 1) // 2``, so T -> ``((T - 1) // 2 - 1) // 2``.
    Inputs shorter than 7 frames give length <= 0 (callers treat those as empty).
    """
    return torch.div(torch.div(x_lens - 1, 2, rounding_mode="floor") - 1, 2, rounding_mode="floor")


def make_pad_mask(lengths: torch.Tensor, max_len: int | torch.Tensor) -> torch.Tensor:
    """(B, T) bool mask, True on padded frames."""
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


class Conv2dSubsampling(nn.Module):
    """(B, T, F) -> (B, ((T-1)//2-1)//2, d_model) with two 3x3 stride-2 convs + ReLU + linear."""

    def __init__(self, in_features: int, d_model: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        freq_out = ((in_features - 1) // 2 - 1) // 2
        self.out = nn.Linear(channels * freq_out, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


def relative_positional_encoding(length: torch.Tensor | int, d_model: int, device, dtype) -> torch.Tensor:
    """Sinusoids for relative distances ``length-1, ..., 0, ..., -(length-1)``: (2*length-1, d_model).

    Computed on the fly (no cached table), so any length works and ONNX sees only arange/sin/cos.
    """
    positions = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d_model)
    )
    angles = positions * inv_freq
    pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(-1, d_model)
    return pe.to(dtype)


class RelPositionMultiheadAttention(nn.Module):
    """Transformer-XL style self-attention with relative positions (as in ESPnet's Conformer).

    score(i, j) = (q_i + u)·k_j + (q_i + v)·p_{i-j}, where p is a learned projection of sinusoids of the
    relative distance. The (i, j) -> distance index is built with a gather (ONNX-friendly).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.pos_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q, k, v = self.in_proj(x).chunk(3, dim=-1)
        q = q.reshape(b, t, h, d)
        k = k.reshape(b, t, h, d).transpose(1, 2)  # (B, H, T, D)
        v = v.reshape(b, t, h, d).transpose(1, 2)
        p = self.pos_proj(pos_emb).reshape(-1, h, d).permute(1, 2, 0)  # (H, D, 2T-1)

        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(2, 3))  # (B,H,T,T)
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p)  # (B, H, T, 2T-1)
        position = self._relative_shift(position, t)
        scores = (content + position) / math.sqrt(d)

        key_mask = pad_mask.unsqueeze(1).unsqueeze(2)  # (B, 1, 1, T)
        scores = scores.masked_fill(key_mask, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1).masked_fill(key_mask, 0.0)
        out = torch.matmul(self.dropout(attn), v)  # (B, H, T, D)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, h * d))

    @staticmethod
    def _relative_shift(position: torch.Tensor, t: int) -> torch.Tensor:
        """Pick column ``(t-1) - i + j`` (distance i-j) of row i: (B,H,T,2T-1) -> (B,H,T,T)."""
        rows = torch.arange(t, device=position.device).unsqueeze(1)
        cols = torch.arange(t, device=position.device).unsqueeze(0)
        index = (t - 1) - rows + cols
        index = index.expand(position.size(0), position.size(1), -1, -1)
        return torch.gather(position, 3, index)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.SiLU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, LayerNorm, SiLU, pointwise conv.

    LayerNorm instead of BatchNorm: statistics never mix utterances (padding-safe, small batches in
    fine-tuning stages behave the same as large ones).
    """

    def __init__(self, d_model: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.pointwise_in = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2, groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Conv1d(d_model, d_model, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = F.glu(self.pointwise_in(x.transpose(1, 2)), dim=1)  # (B, C, T)
        x = x.masked_fill(pad_mask.unsqueeze(1), 0.0)
        x = self.depthwise(x).transpose(1, 2)
        x = F.silu(self.norm(x)).transpose(1, 2)
        return self.dropout(self.pointwise_out(x).transpose(1, 2))


class ConformerLayer(nn.Module):
    """Pre-norm macaron block: ½FFN, self-attention, convolution, ½FFN, LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, ff_dim: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.ff_macaron = FeedForward(d_model, ff_dim, dropout)
        self.self_attn = RelPositionMultiheadAttention(d_model, num_heads, dropout)
        self.conv = ConvolutionModule(d_model, kernel_size, dropout)
        self.ff = FeedForward(d_model, ff_dim, dropout)
        self.norm_ff_macaron = nn.LayerNorm(d_model)
        self.norm_attn = nn.LayerNorm(d_model)
        self.norm_conv = nn.LayerNorm(d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.norm_out = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pos_emb: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff_macaron(self.norm_ff_macaron(x))
        x = x + self.dropout(self.self_attn(self.norm_attn(x), pos_emb, pad_mask))
        x = x + self.conv(self.norm_conv(x), pad_mask)
        x = x + 0.5 * self.ff(self.norm_ff(x))
        return self.norm_out(x)


class ConformerEncoder(nn.Module):
    """(B, T, F) features -> (B, T', d_model), T' = subsampled_lengths(T)."""

    def __init__(self, feature_dim: int, d_model: int, num_layers: int, num_heads: int, ff_dim: int,
                 kernel_size: int, dropout: float, subsampling_channels: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.embed = Conv2dSubsampling(feature_dim, d_model, subsampling_channels)
        self.input_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            ConformerLayer(d_model, num_heads, ff_dim, kernel_size, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.embed(x)
        lengths = subsampled_lengths(x_lens)
        t = x.size(1)
        pad_mask = make_pad_mask(lengths, t)
        pos_emb = relative_positional_encoding(t, self.d_model, x.device, x.dtype)
        x = self.input_dropout(x * math.sqrt(self.d_model))
        for layer in self.layers:
            x = layer(x, pos_emb, pad_mask)
        x = self.final_norm(x)
        return x.masked_fill(pad_mask.unsqueeze(-1), 0.0), lengths
