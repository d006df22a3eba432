"""Per-source augmentation settings (one :class:`AugmentConfig` per data source in a stage)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from synthasr.config import ConfigError

CODECS = ("mulaw", "alaw")  # synthasr.augment.channel.CODECS (not imported: config stays import-light)
TRANSFER_PROBS = ("vtlp_prob", "pitch_prob", "tempo_prob", "mic_eq_prob", "telephone_prob", "codec_prob")


@dataclass
class AugmentConfig:
    """What to do to each cut of one source; every probability is drawn afresh per cut and epoch.

    ``speed``: factors chosen uniformly per cut (``[0.9, 1.0, 1.1]`` = classic 3-way perturbation
    without tripling the epoch). ``noise_prob``/``snr_range``: additive noise from the noise CutSet.
    ``reverb_prob``: convolution with a simulated room impulse response. ``volume_prob``/
    ``volume_range``: a gain factor. ``bandlimit_prob``/``band_hz``: telephone-like band-pass and
    ``mulaw_prob``/``mulaw_bits``: codec-like quantisation, both to make clean TTS audio sound less
    synthetic. All off by default, so ``AugmentConfig()`` leaves cuts untouched.

    Transfer keys (voices and channels the TTS engines never produce; see :mod:`synthasr.augment.voice`
    and :mod:`synthasr.augment.channel`): ``vtlp_prob``/``vtlp_range`` (vocal-tract-length warp
    factor, uniform), ``pitch_prob``/``pitch_semitones`` (pitch shift keeping the duration, uniform
    in semitones), ``tempo_prob``/``tempo_range`` (tempo without pitch change, uniform),
    ``mic_eq_prob``/``mic_eq_bands``/``mic_eq_gain_db`` (1..bands random biquads of at most
    +-gain dB each), ``telephone_prob``/``telephone_band_hz`` (8 kHz line with band-pass) and
    ``codec_prob``/``codecs`` (8 kHz G.711-like companding, codec chosen uniformly). Their random
    draws are made only when one of these probabilities is non-zero, after all the others, so a
    config without them consumes exactly the same random numbers as before they existed.
    """

    speed: List[float] = field(default_factory=lambda: [1.0])
    volume_prob: float = 0.0
    volume_range: List[float] = field(default_factory=lambda: [0.5, 1.5])
    reverb_prob: float = 0.0
    noise_prob: float = 0.0
    snr_range: List[float] = field(default_factory=lambda: [10.0, 20.0])
    bandlimit_prob: float = 0.0
    band_hz: List[float] = field(default_factory=lambda: [300.0, 3400.0])
    mulaw_prob: float = 0.0
    mulaw_bits: int = 8
    vtlp_prob: float = 0.0
    vtlp_range: List[float] = field(default_factory=lambda: [0.9, 1.1])
    pitch_prob: float = 0.0
    pitch_semitones: List[float] = field(default_factory=lambda: [-2.0, 2.0])
    tempo_prob: float = 0.0
    tempo_range: List[float] = field(default_factory=lambda: [0.9, 1.1])
    mic_eq_prob: float = 0.0
    mic_eq_bands: int = 3
    mic_eq_gain_db: float = 6.0
    telephone_prob: float = 0.0
    telephone_band_hz: List[float] = field(default_factory=lambda: [300.0, 3400.0])
    codec_prob: float = 0.0
    codecs: List[str] = field(default_factory=lambda: ["mulaw", "alaw"])

    def validate(self) -> None:
        if not self.speed or any(f <= 0 for f in self.speed):
            raise ConfigError(f"speed: factors must be a non-empty list of positive numbers, got {self.speed}")
        for name in ("volume_prob", "reverb_prob", "noise_prob", "bandlimit_prob", "mulaw_prob") + TRANSFER_PROBS:
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name}: must be a probability in [0, 1], got {p}")
        _check_range("volume_range", self.volume_range, low=0.0)
        _check_range("snr_range", self.snr_range)
        _check_range("band_hz", self.band_hz, low=0.0)
        if not 2 <= self.mulaw_bits <= 16:
            raise ConfigError(f"mulaw_bits: must be in [2, 16], got {self.mulaw_bits}")
        self._validate_transfer()

    def _validate_transfer(self) -> None:
        """Ranges outside which the transforms stop sounding like speech (or stop being defined)."""
        _check_range("vtlp_range", self.vtlp_range, low=0.5, high=2.0)
        _check_range("pitch_semitones", self.pitch_semitones, low=-12.0, high=12.0)
        _check_range("tempo_range", self.tempo_range, low=0.5, high=2.0)
        if not 1 <= self.mic_eq_bands <= 8:
            raise ConfigError(f"mic_eq_bands: must be in [1, 8], got {self.mic_eq_bands}")
        if not 0.0 <= self.mic_eq_gain_db <= 24.0:
            raise ConfigError(f"mic_eq_gain_db: must be in [0, 24], got {self.mic_eq_gain_db}")
        # The telephone band lives inside an 8 kHz round trip: its top edge must stay below 4 kHz.
        _check_range("telephone_band_hz", self.telephone_band_hz, low=1.0, high=3900.0)
        if self.telephone_band_hz[0] == self.telephone_band_hz[1]:
            raise ConfigError(f"telephone_band_hz: low and high must differ, got {self.telephone_band_hz}")
        if not self.codecs or any(c not in CODECS for c in self.codecs):
            raise ConfigError(f"codecs: expected a non-empty list of {list(CODECS)}, got {self.codecs}")

    @property
    def uses_transfer(self) -> bool:
        """True when a transfer transform (voice/channel, see the class docstring) can be drawn."""
        return any(getattr(self, name) > 0 for name in TRANSFER_PROBS)

    @property
    def is_identity(self) -> bool:
        """True when no cut can ever be changed (lets callers skip the per-cut map entirely)."""
        return (
            all(f == 1.0 for f in self.speed)
            and self.volume_prob == 0
            and self.reverb_prob == 0
            and self.noise_prob == 0
            and self.bandlimit_prob == 0
            and self.mulaw_prob == 0
            and not self.uses_transfer
        )


def _check_range(name: str, value: List[float], low: float = float("-inf"), high: float = float("inf")) -> None:
    if len(value) != 2 or value[0] > value[1] or value[0] < low or value[1] > high:
        bounds = f"min >= {low}" + (f", max <= {high}" if high != float("inf") else "")
        raise ConfigError(f"{name}: expected [min, max] with min <= max ({bounds}), got {value}")
