"""jwks_server.py, step 4.a, in process: --export, refusing to start without a key, Ctrl-C
before serving (the app itself: tests/unit/http/test_jwks_app.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import jwks_server
from jwt_guide.config import DEFAULT_KID
from tests.helpers import assert_clean_error


def test_export_writes_the_same_json_as_keys(
    keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "public" / "jwks.json"
    target.parent.mkdir()
    assert jwks_server.main(["--export", str(target)]) == 0
    assert target.read_bytes() == jwks_server.create_app().test_client().get("/keys").data
    assert json.loads(target.read_text())["keys"][0]["kid"] == DEFAULT_KID
    assert str(target) in capsys.readouterr().out


def test_export_without_a_key_names_the_fix(
    empty_keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty_keys_dir.mkdir()
    target = tmp_path / "jwks.json"
    code = jwks_server.main(["--export", str(target)])
    err = capsys.readouterr().err
    assert code == 2  # SPEC: a missing input file is exit 2
    assert "run gen.py first" in err
    assert len(err.strip().splitlines()) == 1
    assert_clean_error(err)
    assert not target.exists()


def test_export_to_a_missing_folder_is_one_line(
    keys_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "no-such-folder" / "jwks.json"
    code = jwks_server.main(["--export", str(target)])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert_clean_error(err)


# --- starting ---------------------------------------------------------------------------------


def _no_serving(*args: object, **kwargs: object) -> None:
    raise AssertionError("the server must not start")


@pytest.mark.parametrize("present", [False, True], ids=["no-folder", "empty-folder"])
def test_refuses_to_start_without_a_key(
    present: bool,
    empty_keys_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if present:
        empty_keys_dir.mkdir()
    monkeypatch.setattr(jwks_server, "run_dev_server", _no_serving)
    assert jwks_server.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"jwks_server: no public key at {empty_keys_dir / '.public.key.pem'}: run gen.py first\n"
    )


def test_ctrl_c_at_startup_is_one_line_and_130(
    keys_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the server binds its port

    monkeypatch.setattr(jwks_server, "run_dev_server", interrupted)
    try:
        code = jwks_server.main([])
    except KeyboardInterrupt:  # not raised on: it would stop this pytest session
        pytest.fail("Ctrl-C escaped main() with a traceback")
    assert code == 130
    assert capsys.readouterr().err == "jwks_server: interrupted\n"


def test_export_names_the_file_by_absolute_path(
    keys_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert jwks_server.main(["--export", "jwks.json"]) == 0
    assert capsys.readouterr().out == f"JWKS written to {tmp_path / 'jwks.json'}\n"
    assert jwks_server.main(["--export", "missing/jwks.json"]) == 1
    assert str(tmp_path / "missing") in capsys.readouterr().err


