"""`atenea models`: the models a running server offers (GET /v1/models)."""

from __future__ import annotations

import argparse
import json
import sys

from app.commands.client import APIClient, ClientError, add_server_options


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the models a running server offers",
        description="List the models a running server offers (GET /v1/models), one id per line.",
    )
    add_server_options(parser, model=False)
    parser.add_argument(
        "--json", action="store_true", help="print the server's whole JSON answer instead (default: off)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with APIClient(args.base_url, args.api_key) as client:
            listing = client.get("/models")
    except ClientError as exc:
        print(f"atenea models: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for card in listing.get("data", []):
        print(f"{card['id']}\t{card.get('owned_by', '')}")
    return 0
