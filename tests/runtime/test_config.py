import pytest

from runtime.config import load_config, render_defaults
from runtime.errors import ConfigError


def test_defaults_bind_localhost_and_keep_no_media():
    cfg = load_config()
    assert cfg.get("server.host") == "127.0.0.1"
    assert cfg.get("store.store_media") is False
    assert cfg.get("store.retention_days") == 30


def test_file_and_overrides(tmp_path):
    f = tmp_path / "k.yml"
    f.write_text("server: {port: 9001}\nsession:\n  idle_timeout_s: 30\n")
    cfg = load_config(f, {"server.port": 9002})
    assert cfg.get("server.port") == 9002
    assert cfg.get("session.idle_timeout_s") == 30
    assert cfg.source == str(f)


@pytest.mark.parametrize("text, key", [
    ("session: {idle_timeout_s: soon}", "session.idle_timeout_s"),
    ("server: {port: 70000}", "server.port"),
    ("server: {host: 'my box'}", "server.host"),
    ("sesion: {idle_timeout_s: 3}", "sesion"),
    ("store: {store_media: 'yes'}", "store.store_media"),
    ("handoff: {notifiers: [{type: webhook}]}", "handoff.notifiers"),
    ("handoff: {notifiers: [{type: pager}]}", "handoff.notifiers"),
    ("server: 8080", "server"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    f = tmp_path / "k.yml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert key in str(e.value) and str(f) in str(e.value)


def test_broken_yaml_names_line(tmp_path):
    f = tmp_path / "k.yml"
    f.write_text("server:\n  port: [1,\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(f)


def test_missing_file_and_binary_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yml")
    f = tmp_path / "bin.yml"
    f.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError):
        load_config(f)


def test_render_defaults_round_trips(tmp_path):
    f = tmp_path / "d.yml"
    f.write_text(render_defaults())
    assert load_config(f).data == load_config().data


def test_state_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "sd"))
    assert load_config().state_dir() == tmp_path / "sd"
    assert load_config(None, {"state_dir": str(tmp_path / "x")}).state_dir() == tmp_path / "x"
