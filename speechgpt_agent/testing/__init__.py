"""Builders of tiny models in the exact upstream formats, for tests and examples.

No weights can be downloaded in CI, so tests create small random models that are
byte-for-byte in the layouts the real loaders read (fairseq checkpoints, joblib
k-means, transformers folders).
"""
