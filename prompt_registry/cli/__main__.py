"""``python -m prompt_registry.cli``: the same as the ``prompt-registry`` command."""

from prompt_registry.cli.main import main

main(prog_name="prompt-registry")
