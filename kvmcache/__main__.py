"""`python -m kvmcache`."""

from kvmcache.cli import main

if __name__ == "__main__":
    main()
