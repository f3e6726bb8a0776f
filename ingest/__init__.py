"""files → Documents → chunks (content-hash ids) → embeddings → Chroma."""
