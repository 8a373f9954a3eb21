"""The CLI's flags: out-of-range numbers are argument errors naming the flag as typed, with the
config's ranges (sysinfer/limits.py); help texts show the config's defaults."""

from __future__ import annotations

import pytest

from sysinfer import limits
from sysinfer.cli import build_parser, default_of
from sysinfer.config import ServerConfig

# flag -> a value out of its range (each range is limits.BOUNDS[the field])
BAD_SERVE_VALUES = {
    "--port": "99999", "--threads": "0", "--max-batch": "0", "--max-queue": "-1", "--ctx-size": "0",
    "--kv-blocks": "0", "--kv-cache-gb": "0", "--max-tokens": "0", "--temperature": "2.5",
    "--request-timeout": "0", "--stall-timeout": "-3", "--drain-seconds": "4000", "--reasoning-budget": "-2",
    "--encoder-slice-tokens": "0", "--encoder-share": "1.5",
}


def _error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("flag", sorted(BAD_SERVE_VALUES))
def test_out_of_range_serve_flags_name_the_flag(capsys, flag):
    err = _error(capsys, ["serve", flag, BAD_SERVE_VALUES[flag]])
    assert f"argument {flag}" in err or f"/{flag}:" in err, err  # -n/--max-tokens: argparse names both
    assert f"got {BAD_SERVE_VALUES[flag]}" in err.replace(".0", "") and "_" not in err.split("error:")[1]


def test_every_bounded_serve_flag_is_checked():
    """Each of the config's bounded fields that `serve` has a flag for is in the table above."""
    dests = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["serve"]._actions}
    assert {f for f in limits.BOUNDS if f in dests} == {f[2:].replace("-", "_") for f in BAD_SERVE_VALUES}


def test_a_non_number_and_generate_info_bench_flags(capsys):
    assert "argument --max-batch: invalid int value: 'two'" in _error(capsys, ["serve", "--max-batch", "two"])
    assert "argument --threads: must be at least 1, got 0" in _error(capsys, ["info", "--threads", "0"])
    assert "argument --threads" in _error(capsys, ["bench", "--threads", "0"])
    assert "-n/--max-tokens: must be at least 1, got 0" in _error(capsys, ["generate", "-p", "x", "-n", "0"])


def test_in_range_values_pass_and_the_config_holds_the_same_ranges():
    args = build_parser().parse_args(["serve", "--port", "65535", "--drain-seconds", "0", "-t", "2"])
    assert (args.port, args.drain_seconds, args.temperature) == (65535, 0.0, 2.0)
    with pytest.raises(ValueError, match="port must be between 1 and 65535, got 99999"):
        ServerConfig(port=99999).validate()


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, field in (("--max-queue", "max_queue"), ("--port", "port"), ("--max-tokens", "max_tokens")):
        entry = text.rsplit(flag, 1)[1].split(" --", 1)[0]  # its line in the options list (after the usage)
        assert f"(default {default_of(field)})" in entry, (flag, entry)
    assert default_of("max_queue") == ServerConfig().max_queue == limits.DEFAULT_MAX_QUEUE


def test_generate_says_its_max_tokens_default(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"default {limits.GENERATE_MAX_TOKENS}; the server's default is {limits.DEFAULT_MAX_TOKENS}" in text
    assert build_parser().parse_args(["generate", "-p", "x"]).max_tokens == limits.GENERATE_MAX_TOKENS


def test_an_out_of_range_variable_is_named_as_set():
    """SYSINFER_MAX_BATCH=0 said `max_batch must be at least 1`: now it names the variable."""
    with pytest.raises(ValueError, match="^SYSINFER_MAX_BATCH must be at least 1, got 0$"):
        ServerConfig.from_env({"SYSINFER_MAX_BATCH": "0"})
    with pytest.raises(ValueError, match="^SYSINFER_PORT must be between 1 and 65535, got 70000$"):
        ServerConfig.from_env({"SYSINFER_PORT": "70000"}, port=None)  # as `serve` passes a flag not given
    # a flag given on the command line wins over the variable (already checked by argparse)
    assert ServerConfig.from_env({"SYSINFER_PORT": "70000"}, port=8000).port == 8000


def test_encoder_flags_reach_the_config(monkeypatch):
    """--embedding-model alone means no chat model; with a chat file both are served."""
    from sysinfer.cli import encoder_overrides

    args = build_parser().parse_args(["serve", "--embedding-model", "e.gguf", "--embedding-model-name", "emb",
                                      "--rerank-model", "r.gguf", "--encoder-share", "0.5"])
    cfg = ServerConfig(model=args.model, **{k: v for k, v in encoder_overrides(args).items() if v is not None})
    assert (cfg.embedding_model, cfg.embedding_model_name, cfg.rerank_model, cfg.encoder_share) == (
        "e.gguf", "emb", "r.gguf", 0.5)
    assert not cfg.serves_chat and cfg.encoder_config().share == 0.5
    assert ServerConfig(model="chat.gguf", embedding_model="e.gguf").serves_chat
    assert ServerConfig().serves_chat  # no file at all: the bundled chat model
