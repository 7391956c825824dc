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


def test_keys_others_can_change_or_read_are_refused_in_one_line(tmp_path):
    """A private key others can read is not private; a trusted key others can write lets them pick what is
    trusted (before, mode 0666 keys were used without a word). keygen's own modes pass whatever the umask."""
    old = os.umask(0)
    try:
        private, public = generate_keys(tmp_path / "k")
    finally:
        os.umask(old)
    assert (stat.S_IMODE(private.stat().st_mode), stat.S_IMODE(public.stat().st_mode)) == (0o600, 0o644)
    assert signing._load(private, private=True) is not None and signing._load(public, private=False) is not None
    for path, mode, rule in [(private, 0o640, "read or written by group or others .*chmod 600"),
                             (private, 0o604, "chmod 600"), (public, 0o666, "written by group or others .*chmod 644"),
                             (public, 0o664, "mode 664")]:
        path.chmod(mode)
        with pytest.raises(PackdError, match=rule):
            signing._load(path, private=path == private)
        path.chmod(0o600 if path == private else 0o644)
    with pytest.raises(PackdError, match="not a key file"):
        signing._load("/dev/zero", private=False)
    big = tmp_path / "big.pem"
    big.write_bytes(b"-" * (signing.KEY_FILE_LIMIT + 1))
    big.chmod(0o644)
    with pytest.raises(PackdError, match="not a key file"):
        signing._load(big, private=False)
