"""`atenea complete`: continue a prompt with the legacy /v1/completions endpoint, streamed to stdout."""

from __future__ import annotations

import argparse
import sys

from app.commands.client import (
    APIClient,
    ClientError,
    add_sampling_options,
    add_server_options,
    sampling_fields,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "complete",
        help="continue a prompt (legacy /v1/completions) against a running server",
        description="Continue a prompt with /v1/completions and print the text as it streams in.",
    )
    parser.add_argument("prompt", nargs="?", default="-", help="the prompt; '-' reads stdin (default: -)")
    add_server_options(parser)
    add_sampling_options(parser, max_tokens=128)
    parser.add_argument(
        "--echo", action="store_true", help="print the prompt before its continuation (default: off)"
    )
    parser.add_argument(
        "--no-stream", action="store_true", help="wait for the whole text instead of streaming (default: off)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    try:
        with APIClient(args.base_url, args.api_key) as client:
            body = {"model": client.pick_model(args.model), "prompt": prompt, **sampling_fields(args)}
            if args.echo:
                sys.stdout.write(prompt)
            if args.no_stream:
                sys.stdout.write(client.post("/completions", body)["choices"][0]["text"])
            else:
                for chunk in client.stream("/completions", body):
                    for choice in chunk.get("choices", []):
                        sys.stdout.write(choice.get("text", ""))
                        sys.stdout.flush()
    except ClientError as exc:
        print(f"atenea complete: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    return 0
