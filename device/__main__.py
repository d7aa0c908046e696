import sys

try:  # SIGINT in the first moments (numpy and LiteRT are still importing) exits 130 too, without a traceback
    if sys.argv[1:2] == ["record"]:  # python -m device record ...: samples into a dataset, no model needed
        from .record import main

        code = main(sys.argv[2:])
    else:
        from .cli import main

        code = main()
except KeyboardInterrupt:
    code = 130
sys.exit(code)
