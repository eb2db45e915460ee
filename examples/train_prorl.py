"""Train with ProRL: ``python examples/train_prorl.py [--config-name NAME] [key=value ...]``.

The same as ``nemo-prorl train``; works under ``torchrun --nproc_per_node N`` for TP/PP/DP.
"""

import sys

from nemo_prorl.trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
