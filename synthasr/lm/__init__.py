"""Language models for decoding: token n-grams over the recognizer's BPE units (:mod:`synthasr.lm.ngram`).
Shallow fusion itself lives in :class:`synthasr.decode.search.ShallowFusion`."""
