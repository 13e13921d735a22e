"""`atenea chat`: a terminal chat, streamed as it is generated, against a running server (`--base-url`)
or an engine started in this process (`--local`).

Each line read is a user turn; the conversation is kept and sent whole each turn, as the API expects.
Lines starting with `/` are commands: `/reset`, `/system TEXT`, `/exit`. End of input also exits,
so `echo 'hi' | atenea chat` answers once and returns.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from app.commands.client import (
    APIClient,
    ClientError,
    add_sampling_options,
    add_server_options,
    sampling_fields,
)
from app.settings import Settings

HELP = "commands: /reset (forget the conversation), /system TEXT (set the system prompt), /exit"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="chat in the terminal with a running server or an in-process engine",
        description=__doc__.split("\n\n", 1)[0].removeprefix("`atenea chat`: "),
        epilog=HELP,
    )
    add_server_options(parser)
    add_sampling_options(parser, max_tokens=512)
    parser.add_argument("--system", default=None, metavar="TEXT", help="system prompt (default: none)")
    parser.add_argument(
        "--local",
        action="store_true",
        help="start the engine in this process instead of using --base-url; --model and the "
        "ATENEA_* variables of `atenea serve` choose what it loads (default: off)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            model = client.pick_model(None if args.local else args.model)
            return chat_loop(client, model, args, sys.stdin, sys.stdout)
    except ClientError as exc:
        print(f"atenea chat: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[APIClient]:
    if not args.local:
        with APIClient(args.base_url, args.api_key) as client:
            yield client
        return
    from app.commands.local_server import LocalServer

    settings = Settings(**({"model": args.model} if args.model else {}))
    with LocalServer(settings) as server, APIClient(server.base_url, settings_api_key(settings)) as client:
        yield client


def settings_api_key(settings: Settings) -> str | None:
    """The key the in-process server will demand, when the settings carry one."""
    keys = getattr(settings, "api_key", None)
    if isinstance(keys, list | tuple):
        return keys[0] if keys else None
    return keys if isinstance(keys, str) else None


def chat_loop(client: APIClient, model: str, args: argparse.Namespace, stdin: TextIO, out: TextIO) -> int:
    interactive = stdin.isatty()
    system: str | None = args.system
    history: list[dict[str, str]] = []
    if interactive:
        print(f"{model} at {client.base_url}. {HELP}", file=sys.stderr)
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command == "/exit":
                return 0
            if command == "/reset":
                history.clear()
            elif command == "/system":
                system = rest.strip() or None
            else:
                print(HELP, file=sys.stderr)
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        try:
            reply = _stream_reply(client, model, messages, args, out)
        except ClientError as exc:
            history.pop()  # the turn failed: do not send it again with the next one
            print(f"error: {exc}", file=sys.stderr)
            continue
        history.append({"role": "assistant", "content": reply})


def _stream_reply(
    client: APIClient, model: str, messages: list[dict[str, str]], args: argparse.Namespace, out: TextIO
) -> str:
    parts: list[str] = []
    body = {"model": model, "messages": messages, **sampling_fields(args)}
    for chunk in client.stream("/chat/completions", body):
        for choice in chunk.get("choices", []):
            delta = choice.get("delta", {}).get("content") or ""
            parts.append(delta)
            out.write(delta)
            out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)
