"""``python -m actorcore``: the command line (see ``cli._cli``)."""

import sys

from .cli._cli import main

if __name__ == "__main__":
    sys.exit(main())
