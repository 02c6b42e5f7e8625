"""``python -m aqueue``: the command line."""

from aqueue._cli import main

# Guarded: a pool process of executor="process" tasks (anyio.to_process) loads the parent's
# main module as ``__mp_main__``; unguarded, it would run the CLI again in there.
if __name__ == "__main__":
    main()
