import sys

try:  # SIGINT in the first moments (numpy and LiteRT are still importing) exits 130 too, without a traceback
    from .cli import main

    code = main()
except KeyboardInterrupt:
    code = 130
sys.exit(code)
