"""GuidedMixup's Table 2 rebuilt: eight mixers as a share of a training step (see keepmix/benchmark_mixers.py)."""

import sys

from keepmix.benchmark_mixers import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
