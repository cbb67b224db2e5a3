"""``python -m shiftlab``: the command line. Ctrl-C while it starts is one line, too."""
import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
sys.exit(main())
