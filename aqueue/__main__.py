"""``python -m aqueue``: the command line."""

from aqueue._cli import main

main()
