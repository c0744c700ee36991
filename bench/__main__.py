"""`python -m bench [--quick]`: load-test the mesh and write bench/results/latest.json."""

from __future__ import annotations

import os
import sys

# The bench forks its children from a thread that also runs gRPC health probes; gRPC's
# fork handlers would then start a poller in the half-made child, which can abort it
# (SIGABRT, "epoll_wait error: Bad file descriptor") before it execs. Must be set before
# grpc is first imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
