"""``python -m fitconnect_kit.server``: run the Zustelldienst (see :mod:`.runner`)."""

from __future__ import annotations

import sys

from fitconnect_kit.server.runner import main

if __name__ == "__main__":
    sys.exit(main())
