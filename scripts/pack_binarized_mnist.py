"""Rebuild ``pyro_vae/_data/binarized_mnist.npz`` from the canonical ``.amat`` files.

Usage (from the repository root)::

    python scripts/pack_binarized_mnist.py [--amat-dir ../shared/data/binarized_mnist]
        [--labels ../shared/data/mnist/t10k-labels-idx1-ubyte.gz] [--out pyro_vae/_data/binarized_mnist.npz]

Checks the md5 of each unzipped ``.amat`` file, bit-packs the 70,000 images (about 2.3 MB),
stores the test labels (MNIST's test labels sorted stably, the order of the test split), and
prints the content sha256 that ``pyro_vae.data.EMBEDDED_SHA256`` must hold.
"""

import argparse
import sys
from pathlib import Path

from pyro_vae.data import EMBEDDED_SHA256, pack_binarized_mnist

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amat-dir", default=ROOT.parent / "shared/data/binarized_mnist")
    parser.add_argument("--labels", default=ROOT.parent / "shared/data/mnist/t10k-labels-idx1-ubyte.gz")
    parser.add_argument("--out", default=ROOT / "pyro_vae/_data/binarized_mnist.npz")
    args = parser.parse_args()
    digest = pack_binarized_mnist(args.amat_dir, args.labels, args.out)
    size = Path(args.out).stat().st_size
    print(f"wrote {args.out} ({size / 1e6:.2f} MB), content sha256 {digest}")
    if digest != EMBEDDED_SHA256:
        print(f"note: pyro_vae/data.py EMBEDDED_SHA256 is {EMBEDDED_SHA256}; update it to {digest}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
