"""GAMA: AST audio encoder (tags, embedding) and an audio-conditioned causal LM (answers)."""
