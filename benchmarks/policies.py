"""Images per second of every policy, region op and mixer, batched vs per-image loop (see keepmix/benchmark_policies.py)."""

import sys

from keepmix.benchmark_policies import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
