"""PyTorch models: text encoder wrapper, item tower, user tower, reranker."""
