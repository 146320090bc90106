"""The ``brainfm`` tool commands: ``data``, ``modalities``, ``evaluate``, ``segment`` and ``export``.

Each module adds its parsers with ``register(subparsers)`` and sets ``func`` (parsed arguments -> exit status);
:mod:`brainfm_lightning.commands.config` reads training configs as ``brainfm fit`` does. The library never imports
this package (``tests/test_layers.py``).
"""
