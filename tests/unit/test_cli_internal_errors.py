"""A bug is not the user's fault, and still ends in one message and an exit code, not a traceback."""
from __future__ import annotations

import pytest

from oblivio import api, cli


def _broken(mode=None):
    raise KeyError("rows")


def test_an_unexpected_exception_is_one_line_and_exit_70(monkeypatch, capsys):
    monkeypatch.setattr(api, "numerics_report", _broken)
    monkeypatch.delenv("OBLIVIO_DEBUG", raising=False)
    assert cli.main(["numerics"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("oblivio numerics: internal error (KeyError: 'rows')") and "OBLIVIO_DEBUG=1" in err


def test_oblivio_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(api, "numerics_report", _broken)
    monkeypatch.setenv("OBLIVIO_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["numerics"])


def test_a_user_mistake_keeps_its_own_message_and_code(capsys):
    assert cli.main(["numerics", "--mode", "native", "--json"]) in (0, 4)  # a real call still works
    with pytest.raises(SystemExit) as stop:
        cli.main(["numerics", "--mode", "bogus"])
    assert stop.value.code == 2 and "invalid choice" in capsys.readouterr().err
