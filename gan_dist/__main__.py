"""`python -m gan_dist` is the `gan-dist` console script."""

from gan_dist.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
