"""The command line as SAM users type it: ``llmfn local X`` is ``llmfn X``,
``-p/--port`` is the port of what the command serves, the gateway's port is
``--gateway-port``, and the former spellings still work with a note."""
from __future__ import annotations

import pytest

from runtime.cli.flags import parser, settings_of


def parse(*argv: str):
    return parser().parse_args(list(argv))


@pytest.mark.parametrize("argv", [
    ("invoke", "Fn", "-t", "app.yaml", "-e", "event.json", "-n", "env.json", "--parameter-overrides", "A=1 B=2",
     "--host", "0.0.0.0", "--log-file", "out.log"),
    ("start-api", "-t", "app.yaml", "-p", "3005", "--warm-containers", "EAGER", "--gateway-port", "0"),
    ("start-lambda", "-t", "app.yaml", "-p", "3006", "--warm-containers", "LAZY", "--log-file", "out.log"),
    ("generate-event", "s3", "put", "--bucket", "b", "--key", "k"),
])
def test_local_commands_take_the_same_flags_as_the_top_level_ones(argv):
    assert vars(parse("local", *argv)) == vars(parse(*argv))


def test_dash_p_is_the_port_of_what_the_command_serves():
    assert parse("start-api", "-p", "3005").api_port == "3005"
    assert parse("start-lambda", "-p", "3006").lambda_port == "3006"
    assert parse("local", "start-lambda", "--port", "3007").lambda_port == "3007"
    settings = settings_of(parse("start-lambda", "-p", "3006", "--gateway-port", "0"))
    assert (settings.lambda_port, settings.gateway_port) == (3006, 0)


def test_serve_keeps_its_named_ports_and_port_is_a_deprecated_gateway_port(capsys):
    args = parse("serve", "--api-port", "1", "--lambda-port", "2", "--port", "3")
    assert (args.api_port, args.lambda_port, args.gateway_port) == ("1", "2", "3")
    assert "--port is deprecated; use --gateway-port" in capsys.readouterr().err
    parse("serve", "--gateway-port", "3")
    assert capsys.readouterr().err == ""


def test_the_former_gateway_port_variable_is_still_read_and_the_new_one_wins(monkeypatch):
    monkeypatch.delenv("LLMFN_GATEWAY_PORT", raising=False)
    monkeypatch.setenv("LLMFN_PORT", "8181")
    assert settings_of(parse("serve")).gateway_port == 8181
    monkeypatch.setenv("LLMFN_GATEWAY_PORT", "8282")
    assert settings_of(parse("serve")).gateway_port == 8282
    assert settings_of(parse("serve", "--gateway-port", "8383")).gateway_port == 8383


def test_invoke_runs_its_gateway_on_a_free_port_by_default():
    assert settings_of(parse("local", "invoke", "Fn")).gateway_port == 0


def test_warm_containers_is_eager_or_lazy_in_any_case_and_only_on_servers(capsys):
    assert settings_of(parse("start-api", "--warm-containers", "eager")).warm_containers == "EAGER"
    assert settings_of(parse("start-lambda")).warm_containers == "LAZY"
    with pytest.raises(SystemExit) as exc:
        parse("start-api", "--warm-containers", "SOMETIMES")
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        parse("invoke", "Fn", "--warm-containers", "EAGER")  # one invocation: nothing to keep warm
    assert "unrecognized arguments: --warm-containers" in capsys.readouterr().err


def test_init_takes_starter_and_template_is_its_deprecated_name(capsys):
    assert parse("init", "app", "--starter", "s3-summarizer").starter == "s3-summarizer"
    assert parse("init", "app").starter == "hello-llm"
    assert capsys.readouterr().err == ""
    assert parse("init", "app", "--template", "scheduled-digest").starter == "scheduled-digest"
    assert "--template is deprecated; use --starter" in capsys.readouterr().err


def test_sams_short_flags_name_the_template_the_env_vars_and_the_log_file():
    args = parse("local", "start-api", "-t", "app.yaml", "-n", "env.json", "-l", "functions.log")
    assert (args.template, args.env_vars, args.log_file) == ("app.yaml", "env.json", "functions.log")
