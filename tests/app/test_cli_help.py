"""`atenea --help` and each subcommand's: every flag explained, with its default."""

from __future__ import annotations

import argparse

import pytest

from app.cli import build_parser


def subcommand_parsers(
    parser: argparse.ArgumentParser, prefix: str = "atenea"
) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix} {name}"] = sub
                found.update(subcommand_parsers(sub, f"{prefix} {name}"))
    return found


PARSERS = subcommand_parsers(build_parser())


def test_every_documented_command_exists() -> None:
    assert {"atenea serve", "atenea chat", "atenea complete", "atenea models", "atenea pull"} <= set(PARSERS)
    assert {"atenea bench serve", "atenea bench engine"} <= set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_flag_has_an_explanation_and_a_default(command: str) -> None:
    parser = PARSERS[command]
    help_text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        rendered = " ".join(parser._get_formatter()._expand_help(action).split())
        assert "default:" in rendered, f"{command} {action.option_strings[0]}: no default in {rendered!r}"
        explanation = rendered.split("(default:")[0].strip()
        assert explanation, f"{command} {action.option_strings[0]} only states its default"
        assert rendered in help_text


@pytest.mark.parametrize("command", ["atenea chat", "atenea complete", "atenea models"])
def test_client_commands_name_their_environment_variables(command: str) -> None:
    help_text = " ".join(PARSERS[command].format_help().split())
    assert "env: ATENEA_BASE_URL" in help_text
    assert "env: ATENEA_API_KEY" in help_text


def test_base_url_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATENEA_BASE_URL", "http://gpubox:9000/v1")
    parser = subcommand_parsers(build_parser())["atenea models"]
    assert parser.parse_args([]).base_url == "http://gpubox:9000/v1"
    assert "(default: http://gpubox:9000/v1; env: ATENEA_BASE_URL)" in " ".join(parser.format_help().split())
