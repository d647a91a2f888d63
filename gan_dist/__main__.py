"""`python -m gan_dist` is the `gan-dist` console script."""

from gan_dist.cli import console_main

if __name__ == "__main__":
    console_main()
