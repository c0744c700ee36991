"""`python -m chaos [--quick]`: see chaos/README.md."""

import sys

from chaos.runner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
