"""Keys written whole or not at all: a full disk while `packd-export keygen` writes leaves nothing, and the rerun
works (before, a 0-byte private key stayed and the rerun refused because a key existed)."""

import errno
import os
import stat

import pytest

from packd_runtime import PackdError, signing
from packd_runtime.signing import PRIVATE_KEY, PUBLIC_KEY, generate_keys


@pytest.mark.parametrize("fails", ["private", "public"])
def test_a_full_disk_during_keygen_keeps_nothing_and_the_rerun_works(tmp_path, monkeypatch, fails):
    real_fdopen, real_atomic = os.fdopen, signing.atomic_file

    class Full:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    if fails == "private":
        monkeypatch.setattr(signing.os, "fdopen", lambda fd, mode: (os.close(fd), Full())[1])
    else:
        monkeypatch.setattr(signing, "atomic_file", Full)
    with pytest.raises(PackdError, match="cannot write the key pair .*No space left on device; nothing was kept"):
        generate_keys(tmp_path / "k")
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == []
    monkeypatch.setattr(signing.os, "fdopen", real_fdopen)
    monkeypatch.setattr(signing, "atomic_file", real_atomic)
    private, public = generate_keys(tmp_path / "k")
    assert (private.name, public.name) == (PRIVATE_KEY, PUBLIC_KEY) and private.stat().st_size > 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
