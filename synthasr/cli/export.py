"""``synthasr export``: a checkpoint -> deployable files (ONNX for sherpa-onnx's offline transducer)."""
from __future__ import annotations

import click


@click.command("export")
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False),
              help="SynthASR checkpoint (e.g. exp/pretrained.pt).")
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="onnx: encoder/decoder/joiner.onnx + tokens.txt for sherpa-onnx.")
@click.option("--out-dir", required=True, type=click.Path(file_okay=False), help="Output folder (created).")
@click.option("--int8", is_flag=True, help="Also write dynamically int8-quantized *.int8.onnx files.")
@click.option("--opset", type=click.IntRange(min=13), default=17, show_default=True, help="ONNX opset.")
@click.option("--no-verify", is_flag=True, help="Skip checking the ONNX outputs against PyTorch.")
def export(model_path: str, fmt: str, out_dir: str, int8: bool, opset: int, no_verify: bool) -> None:
    """Export a trained model; prints the sherpa-onnx command line that decodes with it."""
    import logging

    from synthasr.checkpoint import CheckpointError
    from synthasr.export.onnx import ExportError, UnsupportedModelError, export_onnx

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = export_onnx(model_path, out_dir, int8=int8, opset=opset, verify=not no_verify)
    except (CheckpointError, UnsupportedModelError, ExportError) as e:
        raise click.ClickException(str(e)) from None
    for name, path in result.files(int8=False).items():
        click.echo(f"{name}\t{path}")
    for name, path in result.int8.items():
        click.echo(f"{name}.int8\t{path}")
    click.echo(
        "decode with: sherpa-onnx-offline "
        f"--encoder={result.encoder} --decoder={result.decoder} --joiner={result.joiner} "
        f"--tokens={result.tokens} --sample-rate={result.sample_rate} --feat-dim={result.feature_dim} "
        "--decoding-method=greedy_search FILE.wav")
