"""The ``synthasr`` command line: one click subcommand per library entry point.

Subcommands are imported lazily so ``synthasr --help`` stays fast and a broken optional backend
(piper, onnx) never breaks unrelated commands. Environmental failures that reach the top (a full
disk, a file where an output folder must be, a permission) end as ONE line, like every other error.
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple

import click

# name -> (module, attribute, one-line help); each module defines one click command. The help text
# lives here so `synthasr --help` lists commands without importing torch, lhotse or onnx.
_COMMANDS: Dict[str, Tuple[str, str, str]] = {
    "tts-gen": ("synthasr.cli.tts_gen", "tts_gen", "Speak a text list in many voices -> audio + lhotse manifests."),
    "tts-combine": ("synthasr.cli.tts_gen", "tts_combine", "Merge --shard k/N outputs of tts-gen."),
    "tts-voices": ("synthasr.cli.tts_gen", "tts_voices", "List, sample or split TTS voices."),
    "normalize": ("synthasr.cli.text", "normalize_cmd", "Normalize text the way TTS, training and scoring see it."),
    "train-bpe": ("synthasr.cli.text", "train_bpe_cmd", "Train a sentencepiece BPE model + tokens.txt."),
    "train-lm": ("synthasr.cli.text", "train_lm_cmd", "Estimate a token n-gram LM (ARPA) for shallow fusion."),
    "prepare-domain": ("synthasr.cli.text", "prepare_domain_cmd", "Your term list (+ domain text) -> text splits for TTS."),
    "compute-fbank": ("synthasr.cli.data", "compute_fbank_cmd", "Compute and store 80-dim fbank features for a CutSet."),
    "train": ("synthasr.cli.train", "train", "Train an RNN-T from a config, or run a multi-stage schedule."),
    "average": ("synthasr.cli.train", "average", "Average checkpoints (--epoch E --avg K) into one model file."),
    "decode": ("synthasr.cli.decode", "decode", "Transcribe audio files with a trained model."),
    "evaluate": ("synthasr.cli.decode", "evaluate", "Decode a CutSet and write recogs/errs/wer-summary files."),
    "score": ("synthasr.cli.text", "score_cmd", "Score hypotheses against references (WER/CER)."),
    "report": ("synthasr.cli.report", "report", "Write the per-stage forgetting report (json, md, png)."),
    "export": ("synthasr.cli.export", "export", "Export a model (ONNX for sherpa-onnx)."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context):
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str):
        if name not in _COMMANDS:
            return None
        module, attr, _ = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        from synthasr.utils.io import describe_os_error

        try:
            return super().invoke(ctx)
        except OSError as e:
            message = describe_os_error(e)
            if message is None:
                raise
            raise click.ClickException(message) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="synthasr")
def cli() -> None:
    """SynthASR: synthetic speech for new domains, RNN-T training without forgetting."""


def main() -> None:
    cli()
