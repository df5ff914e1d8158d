"""Top-level operator calls, host syncs and graph breaks per op call (see keepmix/launches.py)."""

import sys

from keepmix.launches import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
