"""``python -m shiftlab``: the command line. Ctrl-C while it starts is one line, too.

Under torchrun (``WORLD_SIZE`` set) the process ends with ``os._exit`` once its output is
flushed: the work is done and the files are written (atomically, synced), and skipping the
interpreter's teardown avoids a C++ abort ("terminate called without an active exception",
status 134) that torch.distributed's background threads can cause at exit.
"""
import os
import sys

try:
    from .cli import main
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
code = main()
if "WORLD_SIZE" in os.environ:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
sys.exit(code)
