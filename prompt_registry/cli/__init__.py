"""The ``prompt-registry`` command line (Click), a thin shell over the library.

This package owns only the shell: each verb parses its options, makes one call into the public
API (``Registry`` and friends), and prints the result (a table, or JSON with ``--json``). Option
defaults are read from the library's config dataclasses and constants, never repeated here.

``main`` holds the command group and wires in the command modules (``admin_cmds``,
``registry_cmds``, ``ml_cmds``, ``audit_cmds``); ``_common`` holds what they share (output
helpers, shared options, the ``Context`` object, error handling). Run it as ``prompt-registry``
or ``python -m prompt_registry.cli``.
"""
