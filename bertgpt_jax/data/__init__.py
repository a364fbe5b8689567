"""Corpus readers, the token store, and the BERT / GPT input pipelines."""
