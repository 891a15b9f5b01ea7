"""``python -m prompt_registry_cli``: the same as the ``prompt-registry`` command."""

from prompt_registry_cli.main import main

main(prog_name="prompt-registry")
