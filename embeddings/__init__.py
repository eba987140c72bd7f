"""Speaker embeddings from a trained checkpoint: export, FAISS speaker index, identification, scoring."""
