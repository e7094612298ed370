"""jwt_guide.cli and jwt_guide.errors: one line and the right exit code for every expected
failure, Ctrl-C as 130, a bug's traceback kept."""

from __future__ import annotations

import signal

import pytest

from jwt_guide.cli import ArgumentParser, audience_argument, run
from jwt_guide.errors import InvalidToken, JwtGuideError, KeysUnavailable, UsageError
from tests.helpers import error_line


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [(JwtGuideError("keys already exist"), 1, "prog: keys already exist"),
     (UsageError("no token at /k/token.txt: run sign.py first"), 2,
      "prog: no token at /k/token.txt: run sign.py first"),
     (InvalidToken("expired", "exp passed 2s ago"), 1, "prog: expired: exp passed 2s ago"),
     (KeysUnavailable(3), 1, "prog: the key set is unavailable; retry in 3 s"),
     (KeyboardInterrupt(), 130, "prog: interrupted")],
    ids=["error", "usage", "invalid-token", "keys-unavailable", "ctrl-c"],
)  # fmt: skip
def test_run_maps_each_failure_to_one_line_and_its_code(
    error: BaseException, code: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def body() -> None:
        raise error

    assert run("prog", body) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert error_line(captured.err) == line


def test_run_returns_the_bodys_code_and_keeps_a_bugs_traceback() -> None:
    assert run("prog", lambda: None) == 0
    assert run("prog", lambda: 1) == 1
    with pytest.raises(ZeroDivisionError):
        run("prog", lambda: 1 // 0)


def test_run_puts_pythons_ctrl_c_handling_back() -> None:
    """Each script exits quietly on Ctrl-C while it imports; run() restores the default."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run("prog", lambda: None)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_errors_share_one_root_with_their_details() -> None:
    refused = InvalidToken("audience", "token has 'x'")
    assert (refused.reason, refused.detail, str(refused)) == (
        "audience", "token has 'x'", "audience: token has 'x'"
    )  # fmt: skip
    assert str(InvalidToken("invalid signature")) == "invalid signature"
    assert KeysUnavailable(4).retry_after == 4
    for error in (refused, KeysUnavailable(1), UsageError("u")):
        assert isinstance(error, JwtGuideError)
    assert (JwtGuideError.exit_code, UsageError.exit_code) == (1, 2)


def test_usage_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="x.py")
    parser.add_argument("--audience", type=audience_argument)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--audience", " "])
    assert exited.value.code == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("x.py: error: argument --audience: an audience is printable text")
    assert line.endswith("(see --help)")
