"""The command line as an operator meets it first: version, help, settings files, settings show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from attribution import __version__
from attribution.cli import main
from tests.support.examples import TOPICS_DIR

SHOP = TOPICS_DIR / "examples" / "settings" / "shop_kr.json"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("ATTRIBUTION_", "KAFKA_", "REDIS_")):
            monkeypatch.delenv(name)


def test_version_from_the_command_and_from_python_m(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"attribution, version {__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "attribution", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and __version__ in done.stdout


def test_worker_help_points_at_the_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "attribution settings show" in text
    assert "attribution settings put FILE" in text
    assert "Examples:" in text


def test_help_shows_defaults_and_argument_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Events/s of the latency load. [default: 20000; x>=1]" in text
    assert main(["topics", "create", "--help"]) == 0
    assert "[default: (ATTRIBUTION_PARTITIONS); 1<=x<=10000]" in " ".join(capsys.readouterr().out.split())


def test_a_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tally", "only-one-argument"]) == 2
    assert "Missing argument 'CAMPAIGN'" in capsys.readouterr().err


def test_settings_errors_name_the_file_and_the_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = orjson.loads(SHOP.read_bytes())
    bad = {**good, "conversion_events": [{**good["conversion_events"][0], "window_ms": 0}]}
    (tmp_path / "good.json").write_bytes(orjson.dumps(good))
    (tmp_path / "bad.json").write_bytes(orjson.dumps(bad))
    (tmp_path / "many.json").write_bytes(orjson.dumps([good, bad]))
    assert main(["settings", "validate", str(tmp_path / "good.json"), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"attribution: bad setting {tmp_path / 'bad.json'}: ") and "window_ms" in err
    assert main(["settings", "validate", str(tmp_path / "many.json")]) == 2
    assert f"{tmp_path / 'many.json'} (document 2)" in capsys.readouterr().err
    assert main(["settings", "validate", str(tmp_path / "good.json")]) == 0
    assert f"{tmp_path / 'good.json'}: shop-kr v3: 2 conversion events ok" in capsys.readouterr().out


INVALID = TOPICS_DIR / "examples" / "invalid" / "settings"


def test_settings_validate_refuses_unknown_fields_naming_their_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    top, nested = INVALID / "unknown_top_level_field.json", INVALID / "unknown_conversion_event_field.json"
    assert main(["settings", "validate", str(top)]) == 2
    assert capsys.readouterr().err == (
        f"attribution: bad setting {top}: conversion_event: unknown field "
        "(expected one of: project_id, version, conversion_events, campaign_channels, campaign_goals, "
        "visitor_days, timezone)\n"
    )
    assert main(["settings", "validate", str(nested)]) == 2
    assert capsys.readouterr().err == (
        f"attribution: bad setting {nested}: conversion_events[0].window: unknown field "
        "(expected one of: name, window_ms, basis, purchase)\n"
    )
    # the same through the installed command's entry point, as an operator runs it
    done = subprocess.run(
        [sys.executable, "-m", "attribution", "settings", "validate", str(SHOP), str(top)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert f"{top}: conversion_event: unknown field (expected one of: project_id" in done.stderr


def test_settings_show_lists_every_setting_with_source_and_default_and_masks_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", "rediss://app:s3cret-redis@redis.internal:6380/2?ssl_password=s3cret-key")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-kafka")
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_PASSPHRASE", "s3cret-passphrase")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "attribution")
    monkeypatch.setenv("ATTRIBUTION_GRACE_MS", "5000")
    assert main(["settings", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    rows = {r["name"]: r for r in map(orjson.loads, out.splitlines())}
    assert rows["REDIS_URL"] == {
        "name": "REDIS_URL",
        "value": "rediss://app:***@redis.internal:6380/2?ssl_password=***",
        "source": "environment",
        "default": "redis://127.0.0.1:6379/0",
    }
    assert rows["ATTRIBUTION_GRACE_MS"]["value"] == "5000"
    assert rows["ATTRIBUTION_GRACE_MS"]["source"] == "environment"
    assert rows["ATTRIBUTION_GRACE_MS"]["default"] == "60000"
    assert rows["ATTRIBUTION_BATCH_SIZE"]["source"] == "default"
    assert rows["KAFKA_SASL_PASSWORD"]["value"] == "***"
    assert rows["KAFKA_SASL_USERNAME"]["value"] == "attribution"
    from attribution.infra.config import Config

    assert len([n for n in rows if not n.startswith("KAFKA_") or n == "KAFKA_BOOTSTRAP_SERVERS"]) == len(
        Config.model_fields
    )
    assert main(["settings", "show"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["SETTING", "VALUE", "SOURCE", "DEFAULT"]
    assert "s3cret" not in table
