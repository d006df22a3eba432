#!/usr/bin/env python3
"""The recipe config: its schema, a strict check, and one-value reads for run.sh.

    conf.py --check conf/default.yaml          # unknown keys / wrong types -> one-line error, exit 1
    conf.py conf/default.yaml tts.num_jobs     # print one value (lists space-separated, maps k=v)
    conf.py conf/default.yaml key default      # ... or the default when the key is absent

The schema below is the reference for every key (docs/configuration.md mirrors it). The training
schedule has its own strict schema (synthasr.train.schedule) and is checked when stage 6 starts.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml


@dataclass
class TextConfig:
    """local/prepare_text.py sizes."""

    num_names: int = 400
    unseen_fraction: float = 0.1
    num_med_train: int = 3000
    num_med_dev: int = 300
    num_med_test: int = 300
    num_med_test_unseen: int = 300
    num_general_train: int = 20000
    num_general_dev: int = 500
    num_general_test: int = 500
    general_vocab_size: int = 0


@dataclass
class DomainConfig:
    """Your own domain for stage 0 (docs/your_domain.md); run.sh --terms/--domain-text/--templates override.

    Without ``terms`` and ``text`` the recipe samples the packaged drug lists (``text.num_names``).
    """

    terms: Optional[str] = None       # term list: term [TAB spoken form] [TAB espeak-ng phonemes]
    text: Optional[str] = None        # domain sentences, plain text or JSONL
    templates: str = "conf/templates/medication.txt"  # carrier templates that top the splits up


@dataclass
class TtsConfig:
    engines: List[str] = field(default_factory=lambda: ["espeak", "piper"])
    engine_weights: Dict[str, float] = field(default_factory=dict)
    test_voice_fraction: float = 0.25
    holdout: List[str] = field(default_factory=list)
    exclude: List[str] = field(default_factory=list)  # voice rules kept out of train and test (probe_voices.py)
    num_train_voices: int = 60
    num_test_voices: int = 20
    num_jobs: int = 2
    failure_threshold: float = 0.05
    # Generated pronunciations per name in med_train (tts-gen --pron-variants: espeak-ng varieties and
    # stress shifts, recorded per utterance); 0: the engines' own. Held-out sets always use the engines' own.
    pron_variants: int = 0


@dataclass
class FeaturesConfig:
    """Stage 4's front end; must be what the schedule's model expects (whisper_fbank for a Whisper encoder)."""

    type: str = "fbank"


@dataclass
class RealSpeechConfig:
    """Stage 2's real-human-speech test set (evaluation only; local/prepare_real_speech.py)."""

    enabled: bool = False
    optional: bool = True     # a missing source is a warning and the recipe goes on without the set
    sources: List[str] = field(default_factory=lambda: ["asterisk", "pocketsphinx"])
    max_utterances: int = 0   # > 0: a seeded random sample of that many utterances (smoke runs)


@dataclass
class PeerConfig:
    """Stage 9's peer row: Whisper tiny.en (faster-whisper) on the same audio (local/whisper_peer.py)."""

    enabled: bool = False
    bias: str = "hotwords"    # faster-whisper option that carries the medication names
    max_utterances: int = 0   # > 0: only the first N cuts of each set (smoke runs)
    bias_sets: List[str] = field(default_factory=list)  # the biased setting on these sets only (empty: all)


@dataclass
class BpeConfig:
    vocab_size: int = 500
    model_type: str = "bpe"


@dataclass
class StagesConfig:
    """Which schedule stages recipe stages 6 (baseline), 7 (adapt) and 8 (ablation) run."""

    baseline: List[str] = field(default_factory=list)
    adapt: List[str] = field(default_factory=list)
    ablation: List[str] = field(default_factory=list)


@dataclass
class LmConfig:
    """Stage 9's shallow-fusion LM (a token n-gram, ``synthasr train-lm``); order 0: none."""

    order: int = 0
    scale: float = 0.5
    token_bonus: float = 2.0  # = synthasr's ShallowFusion default (chosen on the dev sets)
    ilm_scale: float = 0.0    # internal-LM estimate subtracted (ShallowFusion.ilm_scale); 0: plain fusion


@dataclass
class DecodeConfig:
    beam_size: int = 4
    hotword_score: float = 0.5
    lm: LmConfig = field(default_factory=LmConfig)


@dataclass
class TargetsConfig:
    new_domain_relative_reduction: float = 65.0
    general_relative_change_max: float = 2.0
    name_recall_min: float = 80.0


@dataclass
class ResultsConfig:
    final_stage: str = ""
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    rows: Dict[str, str] = field(default_factory=dict)
    leave_one_engine_out: List[str] = field(default_factory=list)  # ablation stages adapted on one engine only
    # Stage 9 decodings (evaluate --suffix) for the second targets table: the system the recipe ships
    # against the baseline as it was before the new domain (plain beam search).
    shipped_decoding: str = ""
    before_decoding: str = "modified_beam_search"
    out: Optional[str] = None


@dataclass
class GeneralCorpusConfig:
    """Only read with run.sh --general-corpus."""

    train_parts: Optional[List[str]] = None
    dev_part: Optional[str] = None
    test_part: Optional[str] = None
    max_train_hours: Optional[float] = None


@dataclass
class RecipeConfig:
    schedule: str
    seed: int = 0
    text: TextConfig = field(default_factory=TextConfig)
    domain: DomainConfig = field(default_factory=DomainConfig)
    tts: TtsConfig = field(default_factory=TtsConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    real_speech: RealSpeechConfig = field(default_factory=RealSpeechConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    bpe: BpeConfig = field(default_factory=BpeConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    results: ResultsConfig = field(default_factory=ResultsConfig)
    general_corpus: GeneralCorpusConfig = field(default_factory=GeneralCorpusConfig)


def load(path: str) -> RecipeConfig:
    from synthasr.config import load_config

    cfg = load_config(RecipeConfig, path)
    if len(cfg.stages.baseline) != 1:
        raise ValueError(f"{path}: stages.baseline must name exactly one schedule stage, got {cfg.stages.baseline}")
    if cfg.results.final_stage not in cfg.stages.baseline + cfg.stages.adapt:
        raise ValueError(f"{path}: results.final_stage must name a stage of stages.adapt or stages.baseline, "
                         f"got {cfg.results.final_stage!r}")
    unknown = [st for st in cfg.results.leave_one_engine_out if st not in cfg.stages.ablation]
    if unknown:
        raise ValueError(f"{path}: results.leave_one_engine_out: {unknown[0]!r} is not a stage of stages.ablation")
    if cfg.features.type not in ("fbank", "whisper_fbank"):
        raise ValueError(f"{path}: features.type must be fbank or whisper_fbank, got {cfg.features.type!r}")
    if cfg.peer.bias not in ("hotwords", "initial_prompt"):
        raise ValueError(f"{path}: peer.bias must be hotwords or initial_prompt, got {cfg.peer.bias!r}")
    lm = cfg.decode.lm
    if not 0 <= lm.order <= 10 or lm.scale < 0:
        raise ValueError(f"{path}: decode.lm: order must be 0..10 and scale >= 0, got order {lm.order}, scale {lm.scale}")
    _check_shipped_decoding(path, cfg)
    return cfg


def _check_shipped_decoding(path: str, cfg: RecipeConfig) -> None:
    """results.shipped_decoding names a stage 9 result (``modified_beam_search[-lm][-hotwords]``); one with
    ``-lm`` needs the LM that stage 9 only builds when ``decode.lm.order`` > 0."""
    shipped = cfg.results.shipped_decoding
    if not shipped:
        return
    valid = [f"modified_beam_search{suffix}" for suffix in ("", "-hotwords", "-lm", "-lm-hotwords")]
    if shipped not in valid:
        raise ValueError(f"{path}: results.shipped_decoding: expected one of {valid}, got {shipped!r}")
    if "-lm" in shipped and cfg.decode.lm.order == 0:
        raise ValueError(f"{path}: results.shipped_decoding {shipped!r} needs an LM, but decode.lm.order is 0 "
                         f"(set decode.lm.order, e.g. 4, or ship a decoding without -lm)")


def check(path: str) -> int:
    try:
        load(path)
    except ValueError as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def read_value(path: str, key: str, default: Optional[str]) -> int:
    """Print one value; keys absent from the YAML take the schema's default (after a full check)."""
    from synthasr.config import to_dict

    try:
        node = to_dict(load(path))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node or node[part] is None:
            if default is not None:
                print(default)
                return 0
            print(f"{path}: missing key {key}", file=sys.stderr)
            return 1
        node = node[part]
    if isinstance(node, list):
        print(" ".join(str(v) for v in node))
    elif isinstance(node, dict):
        print(" ".join(f"{k}={v}" for k, v in node.items()))
    elif isinstance(node, bool):
        print("true" if node else "false")
    else:
        print(node)
    return 0


def main(argv: List[str]) -> int:
    if len(argv) == 2 and argv[0] == "--check":
        return check(argv[1])
    if len(argv) in (2, 3):
        return read_value(argv[0], argv[1], argv[2] if len(argv) == 3 else None)
    print("usage: conf.py --check CONFIG.yaml | conf.py CONFIG.yaml dotted.key [default]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
