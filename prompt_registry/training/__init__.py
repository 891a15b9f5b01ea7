"""Training and evaluation of the "1+N" system: the training loop, from-scratch prompts and heads,
evaluation against baselines. Receives typed services (``core.services.Services``), never the facade."""
