"""Settings are the one reader of ``LLMFN_*``: every field is a flag and a variable
named in ``--help``; a bad value is a clear error, never a traceback; pool flags
override the template's pools instead of being ignored."""
from __future__ import annotations

import pytest

from runtime import cli
from runtime.server import served_models
from runtime.settings import PoolSettings, Settings, from_flags
from runtime.template.reader import parse_template


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize("model", [Settings, PoolSettings])
def test_serve_help_names_every_variable(model, capsys):
    text = " ".join(_help("serve", capsys).split())
    for name in model.model_fields:
        assert f"--{name.replace('_', '-')}" in text
        assert f"LLMFN_{name.upper()}" in text


def test_a_bad_variable_is_an_error_naming_it_not_a_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("LLMFN_API_PORT", "abc")
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--api-port / LLMFN_API_PORT" in err and "'abc'" in err and "Traceback" not in err


def test_a_flag_wins_over_its_variable(monkeypatch):
    monkeypatch.setenv("LLMFN_MAX_MESSAGES", "10")
    args = cli.parser().parse_args(["serve", "--max-messages", "20"])
    assert from_flags(Settings, args).max_messages == 20
    assert from_flags(Settings, cli.parser().parse_args(["serve"])).max_messages == 10


def test_models_given_by_variable_are_comma_separated(monkeypatch):
    monkeypatch.setenv("LLMFN_MODEL", "a=/m/a.gguf, embedded")
    settings = from_flags(Settings, cli.parser().parse_args(["serve"]))
    assert [m.name for m in served_models(settings, parse_template({}), {})] == ["a", "gemma3-270m"]


TEMPLATE = {"Metadata": {"llmfn": {"models": {
    "small": {"source": "embedded", "pool": {"idle_timeout": 60, "slots": 2}}}}}}


def test_pool_flags_override_the_templates_pools(monkeypatch):
    monkeypatch.setenv("LLMFN_SLOTS", "4")
    args = cli.parser().parse_args(["serve", "--idle-timeout", "3"])
    overrides = from_flags(PoolSettings, args).overrides()
    assert overrides == {"idle_timeout": 3.0, "slots": 4}
    (model,) = served_models(from_flags(Settings, args), parse_template(TEMPLATE), overrides)
    assert model.pool.idle_timeout == 3.0 and model.pool.slots == 4
    assert model.pool.n_ctx == parse_template(TEMPLATE).models[0].pool.n_ctx  # the rest stays the template's


def test_a_pool_flag_that_breaks_a_templates_pool_is_refused():
    template = {"Metadata": {"llmfn": {"models": {"m": {"pool": {"min_workers": 2, "max_workers": 2}}}}}}
    args = cli.parser().parse_args(["serve", "--max-workers", "1"])
    with pytest.raises(ValueError, match="pool settings: .*min_workers must not exceed max_workers"):
        served_models(from_flags(Settings, args), parse_template(template),
                      from_flags(PoolSettings, args).overrides())


def test_ray_pool_settings_come_as_pool_flags_and_variables(monkeypatch):
    monkeypatch.setenv("LLMFN_POOL_RESOURCES", '{"gpu_l4": 1}')
    monkeypatch.setenv("LLMFN_RAY_ADDRESS", "ray://head:10001")
    args = cli.parser().parse_args(["serve", "--pool-backend", "ray", "--pool-num-gpus", "0.5"])
    overrides = from_flags(PoolSettings, args).overrides()
    (model,) = served_models(from_flags(Settings, args), parse_template(TEMPLATE), overrides)
    assert (model.pool.backend, model.pool.num_gpus, model.pool.resources) == ("ray", 0.5, {"gpu_l4": 1.0})
    assert from_flags(Settings, args).ray_address == "ray://head:10001"
    args = cli.parser().parse_args(["serve", "--pool-resources", "gpu_l4=1,zone_a=0.5"])
    (model,) = served_models(Settings(), parse_template(TEMPLATE), from_flags(PoolSettings, args).overrides())
    assert model.pool.resources == {"gpu_l4": 1.0, "zone_a": 0.5} and model.pool.backend == "local"


def test_a_pool_backend_other_than_local_or_ray_is_refused():
    args = cli.parser().parse_args(["serve", "--pool-backend", "k8s"])
    with pytest.raises(ValueError, match="backend"):
        served_models(Settings(), parse_template(TEMPLATE), from_flags(PoolSettings, args).overrides())


@pytest.mark.parametrize("given", ["GPU=1", "gpu_l4=-1", "gpu_l4"])
def test_a_resource_request_ray_would_refuse_is_refused_with_the_reason(given):
    args = cli.parser().parse_args(["serve", "--pool-resources", given])
    with pytest.raises(ValueError, match="resources: "):
        served_models(Settings(), parse_template(TEMPLATE), from_flags(PoolSettings, args).overrides())
