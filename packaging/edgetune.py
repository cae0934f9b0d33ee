"""The bundle's one executable: the window, or the engine CLI when the first argument is `engine`.

A frozen bundle has no `python -m engine`; app.engine_client.engine_command starts the engine as
`<this executable> engine …` instead. The engine branch never imports Qt, the window branch
never imports torch, as in a source checkout.
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["engine"]:
        from engine.cli import main as engine_main

        sys.exit(engine_main(sys.argv[2:]))
    from app.__main__ import main as app_main

    sys.exit(app_main(sys.argv[1:]))
