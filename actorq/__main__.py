"""``python -m actorq``: the command-line tool (see :mod:`actorq.cli`)."""

from __future__ import annotations

import sys

from actorq.cli import main

if __name__ == "__main__":
    sys.exit(main())
