import sys

try:  # SIGINT in the first moments (while importing) exits 130 too, without a traceback
    from .cli import main

    code = main()
except KeyboardInterrupt:
    code = 130
sys.exit(code)
