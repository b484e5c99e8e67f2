"""One module per ``autoseg`` subcommand; each defines ``register(subparsers)``."""
