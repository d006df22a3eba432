"""SynthASR: adapt RNN-T recognizers to new domains from synthetic speech, without forgetting."""
__version__ = "0.1.0"
