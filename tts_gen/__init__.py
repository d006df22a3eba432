"""Synthetic speech generation: text -> many voices -> 16 kHz audio + lhotse manifests."""
