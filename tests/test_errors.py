"""The error taxonomy: one classifier, and the exit status every command line and job uses."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError, EndpointConnectionError

from lookalike.errors import BAD_INPUT, BUG, TRANSIENT, ConfigError, TransientError, classify
from lookalike.extract.source import ExtractError, read_source
from tests.conftest import DS, write_config

REPO = Path(__file__).resolve().parents[1]


def _s3_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("exc, kind", [
    (ConfigError("neighbors.index"), BAD_INPUT),
    (FileNotFoundError("lookalike.yaml"), BAD_INPUT),
    (_s3_error("AccessDenied", 403), BAD_INPUT),
    (_s3_error("SlowDown", 503), TRANSIENT),
    (_s3_error("InternalError", 500), TRANSIENT),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TRANSIENT),
    (ConnectionResetError(), TRANSIENT),
    (TransientError("lost the race"), TRANSIENT),
    (OSError("When reading: AWS Error SLOW_DOWN during GetObject"), TRANSIENT),
    (KeyError("a bug"), BUG),
    (ValueError("max() arg is an empty sequence"), BUG),
])
def test_each_failure_has_one_kind(exc, kind):
    assert classify(exc) == kind


def test_the_cause_decides_when_the_error_itself_is_generic():
    try:
        try:
            raise _s3_error("SlowDown", 503)
        except ClientError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        assert classify(outer) == TRANSIENT


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_database_is_transient_and_a_missing_table_is_bad_input(tmp_path):
    with pytest.raises(TransientError, match="could not be reached"):
        read_source(f"postgresql+psycopg://u:secret@127.0.0.1:{_closed_port()}/db", "catalog.sql",
                    {"window_start": "x", "window_end": "y"})
    db = tmp_path / "empty.db"
    sa.create_engine(f"sqlite:///{db}").connect().close()
    with pytest.raises(ExtractError, match="source contract"):
        read_source(f"sqlite:///{db}", "catalog.sql", {"window_start": "x", "window_end": "y"})


def test_the_command_line_exits_2_for_bad_input_and_75_for_a_transient_failure(tmp_path, sample_dir):
    bad = write_config(tmp_path, sample_dir, neighbors={"index": "nonsense"})
    (tmp_path / "down").mkdir()
    down = write_config(tmp_path / "down", sample_dir,
                        source={"url": f"postgresql+psycopg://u:secret@127.0.0.1:{_closed_port()}/db", "images": "x"})
    for config, status, words in [(bad, 2, "neighbors.index"), (down, 75, "transient error, retry later")]:
        done = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "extract", "--config", str(config), "--ds", DS],
                              capture_output=True, text=True, cwd=REPO, timeout=300)
        assert done.returncode == status, done.stderr[-2000:]
        assert words in done.stderr and "Traceback" not in done.stderr and "secret" not in done.stderr
