"""Input-pipeline throughput: streaming (DataLoader workers) vs in-memory, on JPEGs (see keepmix/benchmark_throughput.py)."""

import sys

from keepmix.benchmark_throughput import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
