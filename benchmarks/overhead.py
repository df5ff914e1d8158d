"""Op overhead as a ratio of one CIFAR ResNet-18 training step (see keepmix/benchmark.py)."""

import sys

from keepmix.benchmark import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
