"""One module per `adrank` subcommand.

Each module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Modules stay import-light: heavy imports (torch, numba kernels, FastAPI) happen inside
``run`` so that ``adrank --help`` is instant and the serving install never needs torch.
"""

# Order shown by `adrank --help`.
COMMANDS = ["generate", "train", "evaluate", "inspect", "experiment", "export", "serve", "default-models", "bench",
            "loadtest"]
