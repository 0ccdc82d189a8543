"""``[realtime]`` of the configuration, and ``--realtime-url``."""

import pytest

from cozyd.config import ConfigError, load_config
from cozyd.realtime.hub import EventHub
from cozyd.service import realtime_parts
from cozyd.testing import write_config


def test_defaults_are_the_reference_limits(tmp_path):
    config = load_config(write_config(str(tmp_path)), env={})
    assert config.get("realtime", "url") == ""
    parts = realtime_parts(config, EventHub(), clock=None)
    limits = parts.factory.limits
    assert limits.max_message_size == 1024
    assert (limits.ping_interval, limits.ping_timeout) == (54, 6)


def test_the_flag_beats_the_file_and_bad_values_are_reported(tmp_path):
    path = write_config(
        str(tmp_path),
        realtime={"url": "redis://127.0.0.1:6379/0", "max_subscriptions": "10"},
    )
    config = load_config(path, env={}, flags={"realtime-url": "redis://other:7000/2"})
    assert config.get("realtime", "url") == "redis://other:7000/2"
    assert config.get("realtime", "max_subscriptions") == 10
    bad = write_config(
        str(tmp_path / "bad"),
        realtime={"url": "http://nope", "max_queue": "0", "max_message_size": "1KiB"},
    )
    with pytest.raises(ConfigError) as error:
        load_config(bad, env={})
    text = "\n".join(error.value.problems)
    assert "[realtime] url" in text and "[realtime] max_queue" in text
    assert "max_message_size" not in text
