"""Only trusted bundles: Ed25519 signatures over a bundle's manifest (with the `cryptography` library).

The manifest holds the sha256 of every graph, the threshold and every limit, so signing it signs all of them.
`manifest.sig` (JSON, beside the manifest, not itself hashed) holds the signature, the signing key's id and the
engines the signer vouched for. TensorRT engines built later on the target change the manifest's `engines` list
and add files, so the signed payload leaves them out and names the engines present at signing time instead: with
trusted keys, the runtime loads only those engines (sign again after `packd-export build` on the target to trust
the new ones); any other engine is ignored and ONNX Runtime runs the signed graphs. TensorRT's own guidance is to
load only plans you trust, and an engine is code the GPU runs: it is trusted only when a key vouched for it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from packd_runtime.atomic import atomic_file, write_json
from packd_runtime.bundle_format import verify_files
from packd_runtime.errors import PackdError
from packd_runtime.files import read_json
from packd_runtime.manifest import Manifest, read_manifest

SIGNATURE = "manifest.sig"
PRIVATE_KEY, PUBLIC_KEY = "packd_signing_key.pem", "packd_signing_key.pub.pem"
KEY_FILE_LIMIT = 64 * 1024  # a PEM Ed25519 key is about 120 bytes
INSTALL = "signing needs the cryptography package: pip install cryptography (or 'packd-runtime[signing]')"


def _crypto() -> tuple[Any, Any]:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise PackdError(INSTALL) from None
    return serialization, ed25519


def signed_payload(manifest: Manifest, engines: list[dict[str, str]]) -> bytes:
    """The bytes a signature covers: the manifest without its engines (and their files), and the engines the
    signer vouched for, as canonical JSON."""
    engine_files = {e.file for e in manifest.engines}
    view = {k: v for k, v in manifest.to_dict().items() if k != "engines"}
    view["files"] = {k: v for k, v in manifest.files.items() if k not in engine_files}
    return json.dumps({"manifest": view, "engines": engines}, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_key: Any) -> str:
    """A short, stable name of a public key: the sha256 of its raw bytes, 16 hex digits."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(out: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair as two PEM files in `out`: the private one readable by its owner only (0600), the
    public one writable by its owner only (0644). Existing keys are never overwritten."""
    serialization, ed25519 = _crypto()
    out = Path(out)
    private, public = out / PRIVATE_KEY, out / PUBLIC_KEY
    for path in (private, public):
        if path.exists() or path.is_symlink():
            raise PackdError(f"{path} exists: keys are never overwritten; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    partial = out / f".{PRIVATE_KEY}.partial"  # written whole, owner-only, then linked in: never a cut key
    partial.unlink(missing_ok=True)
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(partial, private)  # fails if a key appeared meanwhile: never overwritten
        try:
            with atomic_file(public) as f:
                f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
            os.chmod(public, 0o644)  # whatever the umask: a trusted key others can write is refused
        except BaseException:
            private.unlink()  # ours, written just now: a rerun must not find half a pair
            raise
    except OSError as e:
        raise PackdError(f"cannot write the key pair in {out}: {e.strerror or e}; nothing was kept") from None
    finally:
        partial.unlink(missing_ok=True)
    return private, public


def _key_bytes(f: Any, path: str | Path, what: str, private: bool) -> bytes:
    """A key file's bytes, if it is a small regular file only its owner can change (and, private, read): a
    trusted key others can write lets them choose what is trusted; a private key others can read is not private."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode) or st.st_size > KEY_FILE_LIMIT:
        raise PackdError(f"{path} is not a key file (a regular file of at most {KEY_FILE_LIMIT} bytes)")
    loose = stat.S_IMODE(st.st_mode) & (0o077 if private else 0o022)
    if os.name == "posix" and loose:
        who = "read or written by group or others" if private else "written by group or others"
        raise PackdError(f"the {what} key {path} can be {who} (mode {stat.S_IMODE(st.st_mode):o}): refused; "
                         f"chmod {'600' if private else '644'} {path}")
    return f.read()


def _load(path: str | Path, private: bool) -> Any:
    serialization, ed25519 = _crypto()
    what = "private" if private else "public"
    try:
        with open(path, "rb") as f:
            data = _key_bytes(f, path, what, private)
    except OSError as e:
        raise PackdError(f"cannot read the {what} key {path}: {e.strerror or e}") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError) as e:
        raise PackdError(f"{path} is not a PEM {what} key: {str(e).splitlines()[0]}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey):
        raise PackdError(f"{path} is not an Ed25519 {what} key (packd-export keygen makes one)")
    return key


def sign_bundle(bundle: str | Path, private_key: str | Path) -> dict[str, Any]:
    """Sign a verified bundle's manifest and the engines it holds now; writes `manifest.sig`, returns it."""
    bundle = Path(bundle)
    key = _load(private_key, private=True)
    manifest = read_manifest(bundle)
    verify_files(bundle, manifest)  # never sign a bundle that was altered since export
    engines = [{"file": e.file, "sha256": manifest.files[e.file]} for e in manifest.engines]
    payload = signed_payload(manifest, engines)
    signature = {"algorithm": "ed25519", "key": key_id(key.public_key()), "engines": engines,
                 "payload_sha256": hashlib.sha256(payload).hexdigest(),
                 "signature": base64.b64encode(key.sign(payload)).decode()}
    write_json(bundle / SIGNATURE, signature)
    return signature


def unverified_signature(bundle: str | Path, manifest: Manifest) -> str | None:
    """Without keys: the id of the key that signed this bundle (None if unsigned), after checking that the
    signature still covers this very manifest (its payload's sha256): a stale signature, which every runtime with
    trusted keys refuses, is one line. Only a key can tell a forged signature from a real one."""
    path = Path(bundle) / SIGNATURE
    if not path.exists():
        return None
    sig = _signature_file(path)
    if sig.get("payload_sha256") != hashlib.sha256(signed_payload(manifest, sig["engines"])).hexdigest():
        raise PackdError(f"{path} does not cover this manifest (changed after signing, or signed by an older packd): "
                         "runtimes with trusted keys refuse the bundle; sign it again, or remove the signature")
    return str(sig.get("key"))


def _signature_file(path: Path) -> dict[str, Any]:
    sig = read_json(path, f"{path.parent} is not signed ({SIGNATURE} missing): refused, because trusted keys were "
                          "given")
    if not isinstance(sig, dict) or not isinstance(sig.get("signature"), str) or not isinstance(
            sig.get("engines"), list) or not all(isinstance(e, dict) and set(e) == {"file", "sha256"}
                                                 and all(isinstance(v, str) for v in e.values())
                                                 for e in sig["engines"]):
        raise PackdError(f"{path} is not a packd signature: refused")
    return sig


def verify_signature(bundle: str | Path, manifest: Manifest, trusted_keys: Iterable[str | Path]) -> set[str]:
    """Refuse the bundle unless one of `trusted_keys` signed this very manifest; returns the engine files the
    signer vouched for (whose hashes the manifest still lists unchanged)."""
    keys = [_load(k, private=False) for k in trusted_keys]
    if not keys:
        raise PackdError("trusted_keys is empty: give at least one public key file, or open without trusted keys")
    from cryptography.exceptions import InvalidSignature

    path = Path(bundle) / SIGNATURE
    sig = _signature_file(path)
    try:
        raw = base64.b64decode(sig["signature"], validate=True)
    except ValueError:
        raise PackdError(f"{path} is not a packd signature: refused") from None
    payload = signed_payload(manifest, sig["engines"])
    for key in keys:
        try:
            key.verify(raw, payload)
        except InvalidSignature:
            continue
        return {e["file"] for e in sig["engines"] if manifest.files.get(e["file"]) == e["sha256"]}
    raise PackdError(f"{bundle}'s signature does not match any trusted key, or the bundle changed after it was "
                     "signed: refused")
