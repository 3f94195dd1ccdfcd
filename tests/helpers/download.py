"""Load CIFAR-10 with ``download: true`` from a test's loopback server (``url``, archive ``md5``)
into ``root``, as a Ray worker does: say it is ready (``<go>.ready-<pid>``), wait for the file
``go``, load, and print how many training images it read."""
import os
import sys
import time


def main(root: str, url: str, md5: str, go: str) -> int:
    from torchvision.datasets import CIFAR10

    from benchmarks.synthetic import skip_md5_check
    from sweeps.config import DatasetConfig
    from sweeps.data import load_dataset

    CIFAR10.url, CIFAR10.tgz_md5 = url, md5  # the archive's own md5 is still checked
    skip_md5_check()  # the extracted files are generated, not the real ones
    open(f"{go}.ready-{os.getpid()}", "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    data = load_dataset(DatasetConfig(name="cifar10", root=root, download=True))
    print(f"LOADED {data.train_size}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
