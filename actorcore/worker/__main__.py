"""``python -m actorcore.worker``: a worker process (see ``_process``)."""

from ._process import main

if __name__ == "__main__":
    main()
