"""wav2vec2: CTC transcripts, mean-pooled embeddings, optional sequence classification."""
