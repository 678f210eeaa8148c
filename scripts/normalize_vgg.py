"""Writes the normalized VGG-19 (unit mean activation per channel, see ``nst_jax/normalize.py``).

The same command as ``nst-jax normalize-weights`` (same flags), for use from a checkout::

    python scripts/normalize_vgg.py                                  # the file --weights normalized uses
    python scripts/normalize_vgg.py --weights vgg19.h5 --images photos/ --output vgg19_normalized.npz
    nst-jax --weights vgg19_normalized.npz --activation-shift -1 ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nst_jax import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(["normalize-weights", *sys.argv[1:]]))
