"""fitconnect-kit: the complete FIT-Connect toolkit for Python.

Packages:

* :mod:`fitconnect_kit.protocol` — pure FIT-Connect rules (models, JOSE, keys, events, problems).
* :mod:`fitconnect_kit.client` — sender and subscriber SDK (async core, sync facade).
* :mod:`fitconnect_kit.server` — our own Zustelldienst (Submission API v1, token service).
* :mod:`fitconnect_kit.cli` — the ``fitconnect`` command.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
