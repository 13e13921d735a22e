"""`atenea` subcommands: each module has `register(subparsers)`; app/cli.py lists the modules."""
