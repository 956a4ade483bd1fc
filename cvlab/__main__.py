"""`python -m cvlab ...`: see cvlab.cli."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while torch and the rest load (seconds): the same one line as later
    sys.stderr.write("cvlab: interrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    sys.exit(main())
