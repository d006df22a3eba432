"""The RNN-T: encoder (Conformer or Whisper), prediction network, joiner, and its training losses.

Losses follow icefall's pruned RNN-T recipe: a cheap "simple" loss on linear projections of encoder
and decoder outputs (``simple_am_proj`` / ``simple_lm_proj`` to the vocabulary) yields gradients from
which pruning ranges are read; the full joiner is then evaluated only inside those ranges
(``rnnt_loss_pruned``). ``kind="full"`` evaluates the joiner on the whole (T, U+1) lattice instead.
All losses are computed in float32 with autocast disabled.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from synthasr.model.config import ModelConfig
from synthasr.model.decoder import LstmDecoder, StatelessDecoder
from synthasr.model.encoder import ConformerEncoder
from synthasr.model.joiner import Joiner


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The encoder family named by ``cfg.encoder`` (a resolved config), randomly initialised."""
    if cfg.encoder == "whisper":
        from synthasr.model.whisper import WhisperEncoder

        if cfg.whisper.checkpoint is not None:
            raise ValueError("model_config.whisper.checkpoint is loaded by synthasr.model.build_model, "
                             "not by Transducer(); build the model with build_model")
        dims = cfg.whisper.dims
        return WhisperEncoder(dims.n_mels, dims.n_state, dims.n_head, dims.n_layer, n_ctx=dims.n_ctx,
                              extra_subsampling=cfg.whisper.extra_subsampling, dropout=cfg.whisper.dropout)
    return ConformerEncoder(
        feature_dim=cfg.feature_dim, d_model=cfg.encoder_dim, num_layers=cfg.num_encoder_layers,
        num_heads=cfg.num_heads, ff_dim=cfg.ff_dim, kernel_size=cfg.conv_kernel_size, dropout=cfg.dropout,
        subsampling_channels=cfg.subsampling_channels,
    )


class TranscriptError(ValueError):
    """A training transcript cannot be used (empty vocabulary id range, too long for its audio...)."""


class Transducer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        cfg = config.resolved()
        if cfg.vocab_size <= 1:
            raise ValueError(f"model_config.vocab_size must be > 1 (set it from the tokenizer), got {cfg.vocab_size}")
        self.config = cfg
        self.encoder = build_encoder(cfg)
        if cfg.decoder_type == "stateless":
            self.decoder = StatelessDecoder(cfg.vocab_size, cfg.decoder_dim, blank_id=0, context_size=cfg.context_size)
        else:
            self.decoder = LstmDecoder(cfg.vocab_size, cfg.decoder_dim, blank_id=0, num_layers=cfg.lstm_layers,
                                       dropout=cfg.dropout)
        self.joiner = Joiner(cfg.encoder_dim, cfg.decoder_dim, cfg.joiner_dim, cfg.vocab_size)
        self.simple_am_proj = nn.Linear(cfg.encoder_dim, cfg.vocab_size)
        self.simple_lm_proj = nn.Linear(cfg.decoder_dim, cfg.vocab_size)

    @property
    def blank_id(self) -> int:
        return self.decoder.blank_id

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F), (B,) -> encoder_out (B, T', encoder_dim), encoder_out_lens (B,)."""
        return self.encoder(x, x_lens)

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor, y: List[List[int]], loss_cfg, step: int = 0,
                from_encoder_out: bool = False) -> Dict[str, torch.Tensor]:
        """Summed-over-batch losses: ``{"loss", "simple", "pruned", "num_frames"}`` (pruned) or
        ``{"loss", "full", "num_frames"}`` (full).

        ``from_encoder_out``: ``x``/``x_lens`` already are encoder outputs (a frozen encoder's stored
        outputs, see :mod:`synthasr.data.encoder_cache`); the encoder is skipped. Going through
        ``forward`` (not :meth:`loss_from_encoder_out`) keeps DDP's hooks in the path.
        """
        if from_encoder_out:
            return self.loss_from_encoder_out(x, x_lens, y, loss_cfg, step)
        encoder_out, encoder_lens = self.encode(x, x_lens)
        return self.loss_from_encoder_out(encoder_out, encoder_lens, y, loss_cfg, step, input_lens=x_lens)

    def loss_from_encoder_out(self, encoder_out: torch.Tensor, encoder_lens: torch.Tensor, y: List[List[int]],
                              loss_cfg, step: int = 0, input_lens: Optional[torch.Tensor] = None
                              ) -> Dict[str, torch.Tensor]:
        """The losses of :meth:`forward` from (B, T', encoder_dim) encoder outputs; ``input_lens`` (the
        feature lengths, when known) only improves the message for a too-short utterance."""
        from synthasr.loss import loss_scales

        self._check_batch(encoder_lens if input_lens is None else input_lens, encoder_lens, y)
        y_padded, y_lens = self._pad_targets(y, encoder_out.device)
        sos_y = torch.cat([torch.full_like(y_padded[:, :1], self.blank_id), y_padded], dim=1)
        decoder_out = self.decoder(sos_y)  # (B, U+1, D)
        boundary = torch.zeros(len(y), 4, dtype=torch.int64, device=encoder_out.device)
        boundary[:, 2] = y_lens
        boundary[:, 3] = encoder_lens
        num_frames = encoder_lens.sum()

        if loss_cfg.kind == "full":
            full = self._full_loss(encoder_out, decoder_out, y_padded, boundary, loss_cfg)
            return {"loss": full, "full": full.detach(), "num_frames": num_frames}
        if loss_cfg.kind != "pruned":
            raise ValueError(f"loss.kind must be 'pruned' or 'full', got {loss_cfg.kind!r}")
        simple, pruned = self._pruned_losses(encoder_out, decoder_out, y_padded, boundary, loss_cfg)
        simple_scale, pruned_scale = loss_scales(loss_cfg, step)
        loss = simple_scale * simple + pruned_scale * pruned
        return {"loss": loss, "simple": simple.detach(), "pruned": pruned.detach(), "num_frames": num_frames}

    def _full_loss(self, encoder_out, decoder_out, y_padded, boundary, loss_cfg) -> torch.Tensor:
        from synthasr.loss import rnnt_loss

        logits = self.joiner(encoder_out.unsqueeze(2), decoder_out.unsqueeze(1))  # (B, T, U+1, V)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return rnnt_loss(logits.float(), y_padded, termination_symbol=self.blank_id, boundary=boundary,
                             reduction="sum", backend=loss_cfg.backend)

    def _pruned_losses(self, encoder_out, decoder_out, y_padded, boundary, loss_cfg):
        from synthasr import loss as L

        lm = self.simple_lm_proj(decoder_out)
        am = self.simple_am_proj(encoder_out)
        with torch.autocast(device_type=am.device.type, enabled=False):
            simple, (px_grad, py_grad) = _simple_loss(lm.float(), am.float(), y_padded, boundary, loss_cfg)
        ranges = L.get_rnnt_prune_ranges(px_grad, py_grad, boundary, loss_cfg.prune_range)
        am_pruned, lm_pruned = L.do_rnnt_pruning(
            self.joiner.encoder_proj(encoder_out), self.joiner.decoder_proj(decoder_out), ranges
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)  # (B, T, s_range, V)
        with torch.autocast(device_type=logits.device.type, enabled=False):
            pruned = L.rnnt_loss_pruned(logits.float(), y_padded, ranges, termination_symbol=self.blank_id,
                                        boundary=boundary, reduction="sum", backend=loss_cfg.backend)
        return simple, pruned

    def _pad_targets(self, y: List[List[int]], device) -> Tuple[torch.Tensor, torch.Tensor]:
        max_len = max((len(seq) for seq in y), default=0)
        padded = torch.zeros(len(y), max_len, dtype=torch.int64)
        for i, seq in enumerate(y):
            padded[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.int64)
        lens = torch.tensor([len(seq) for seq in y], dtype=torch.int64)
        return padded.to(device), lens.to(device)

    def _check_batch(self, x_lens: torch.Tensor, encoder_lens: torch.Tensor, y: List[List[int]]) -> None:
        """Fail with a message naming the utterance instead of a NaN loss or an index error."""
        if len(y) != x_lens.numel():
            raise TranscriptError(f"batch has {x_lens.numel()} feature rows but {len(y)} transcripts")
        vocab = self.config.vocab_size
        for i, seq in enumerate(y):
            bad = [t for t in seq if not 0 < t < vocab]
            if bad:
                raise TranscriptError(f"utterance {i}: token id {bad[0]} outside 1..{vocab - 1}")
        too_short = (encoder_lens <= 0).nonzero()
        if too_short.numel():
            i = int(too_short[0, 0])
            raise TranscriptError(f"utterance {i}: {int(x_lens[i])} feature frames is too short (need >= 7)")


def _simple_loss(lm, am, symbols, boundary, loss_cfg):
    """Simple (trivial-joiner) loss with gradients for pruning; smoothed when am/lm scales are set."""
    from synthasr import loss as L

    if loss_cfg.am_scale or loss_cfg.lm_scale:
        smoothed = getattr(L, "rnnt_loss_smoothed", None)
        if smoothed is None:
            raise ValueError("loss.am_scale/lm_scale need synthasr.loss.rnnt_loss_smoothed, which is not available")
        return smoothed(lm=lm, am=am, symbols=symbols, termination_symbol=0, lm_only_scale=loss_cfg.lm_scale,
                        am_only_scale=loss_cfg.am_scale, boundary=boundary, reduction="sum", return_grad=True,
                        backend=loss_cfg.backend)
    return L.rnnt_loss_simple(lm, am, symbols, termination_symbol=0, boundary=boundary, reduction="sum",
                              return_grad=True, backend=loss_cfg.backend)
