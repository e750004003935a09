"""Tiny reference models: the real architectures from transformers configurations, with
deterministic weights from a fixed seed. Built locally in seconds; nothing is downloaded.

Imports only go down: `vocab` (words, labels, tokenizers) <- `wav2vec2`, `gama_release` (a
tiny checkpoint in GAMA's released layout) <- `gama` (that release converted and served)."""
