"""deqkit.teach: fast mode."""

from deqkit.teach import fast_mode


def test_fast_mode(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("DEQKIT_FAST", "0")
    assert not fast_mode()
    monkeypatch.setenv("CI", "true")
    assert fast_mode()
