"""Saliency-memory evidence on SalientShapes: glyph pixels removed (fidelity) and staleness (see keepmix/memory_study.py).

    python benchmarks/memory_study.py fidelity --seeds 0 1 2
    python benchmarks/memory_study.py staleness --seeds 0 1 2
"""

import sys

from keepmix.memory_study import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
