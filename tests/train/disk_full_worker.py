"""Worker for tests/train/test_disk_full_ranks.py, run under torchrun: `gan-dist train ARGS` on every rank, with
one rank's checkpoint writes (GAN_DIST_TEST_FULL_RANK) failing as on a full disk (ENOSPC from gan_dist.files'
open for anything inside a `.tmp-step_*` folder: the main process's checkpoint files, or another rank's RNG
state)."""

import errno
import os
import sys

import gan_dist.files
from gan_dist.cli import end_process, main


def _full_open(file, mode="r", *args, **kwargs):
    if any(flag in mode for flag in "wa+") and ".tmp-step_" in str(file):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
    return open(file, mode, *args, **kwargs)


if __name__ == "__main__":
    if os.environ.get("RANK", "0") == os.environ["GAN_DIST_TEST_FULL_RANK"]:
        gan_dist.files.open = _full_open  # module-level name lookups in gan_dist.files find it first
    end_process(main(sys.argv[1:]))
