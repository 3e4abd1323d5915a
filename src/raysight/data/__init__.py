"""Input rows, tokenization and token-budget batching."""
