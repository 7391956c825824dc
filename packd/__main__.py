"""`python -m packd ...` is the `packd` command: what torchrun launches (`torchrun ... -m packd train ...`)."""

from packd.cli import main

if __name__ == "__main__":
    main()
