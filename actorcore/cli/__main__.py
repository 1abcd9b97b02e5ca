"""``python -m actorcore.cli``: the ``actorcore`` command."""

import sys

from ._cli import main

sys.exit(main())
