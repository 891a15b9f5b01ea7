"""Frozen Hugging Face backbones: loading a registered model (fingerprint-checked), soft-prompt injection
into the input embeddings (``prompting``), task heads (``heads``). Knows nothing of the registry."""
