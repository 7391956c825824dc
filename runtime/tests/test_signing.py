"""Signed bundles, torch-free: what a signature covers (the manifest's every value, the engines present at signing),
what with trusted keys is refused, and what `check` without a key can still tell (a stale signature)."""

import base64
import json
import shutil

import numpy as np
import pytest
from toy_bundle import write_toy_bundle

from packd_runtime import Detector, PackdError, signing
from packd_runtime.bundle_format import MANIFEST
from packd_runtime.manifest import read_manifest
from packd_runtime.signing import (
    PRIVATE_KEY,
    PUBLIC_KEY,
    SIGNATURE,
    generate_keys,
    key_id,
    sign_bundle,
    signed_payload,
    unverified_signature,
    verify_signature,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return generate_keys(root / "a"), generate_keys(root / "b")


@pytest.fixture
def signed(tmp_path, keys):
    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    sign_bundle(bundle, keys[0][0])
    return bundle


def _edit(bundle, **values):
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest.update(values)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_a_signature_names_its_key_and_covers_the_manifest(signed, keys):
    sig = json.loads((signed / SIGNATURE).read_text())
    public = signing._load(keys[0][1], private=False)
    assert sig["algorithm"] == "ed25519" and sig["engines"] == []
    assert sig["key"] == key_id(public) and len(sig["key"]) == 16 and int(sig["key"], 16) >= 0
    manifest = read_manifest(signed)
    public.verify(base64.b64decode(sig["signature"]), signed_payload(manifest, []))
    payload = json.loads(signed_payload(manifest, []))
    assert payload["engines"] == [] and payload["manifest"]["threshold"] == manifest.threshold
    assert "engines" not in payload["manifest"] and payload["manifest"]["files"] == manifest.files
    assert verify_signature(signed, manifest, [keys[0][1]]) == set()
    assert verify_signature(signed, manifest, [keys[1][1], keys[0][1]]) == set()  # any one of several keys
    assert unverified_signature(signed, manifest) == sig["key"]


def test_keys_ids_differ_and_are_stable(keys):
    a, b = (signing._load(k[1], private=False) for k in keys)
    assert key_id(a) == key_id(signing._load(keys[0][0], private=True).public_key()) != key_id(b)


@pytest.mark.parametrize("values", [{"threshold": 600.0}, {"threshold": 499.0},
                                    {"created": "2027-01-01T00:00:00+00:00"}])
def test_any_change_after_signing_is_refused_with_keys_and_stale_without(signed, keys, values):
    _edit(signed, **values)
    manifest = read_manifest(signed)
    with pytest.raises(PackdError, match="does not match any trusted key, or the bundle changed after it was signed"):
        verify_signature(signed, manifest, [keys[0][1]])
    with pytest.raises(PackdError, match="does not cover this manifest .*sign it again, or remove the signature"):
        unverified_signature(signed, manifest)
    with pytest.raises(PackdError, match="changed after it was signed"):
        Detector.open(signed, trusted_keys=[keys[0][1]])
    Detector.open(signed).close()  # without keys, trust is the caller's choice


def test_another_key_an_unsigned_bundle_and_bad_signature_files_are_refused(signed, keys, tmp_path):
    manifest = read_manifest(signed)
    with pytest.raises(PackdError, match="does not match any trusted key"):
        verify_signature(signed, manifest, [keys[1][1]])
    with pytest.raises(PackdError, match="trusted_keys is empty"):
        verify_signature(signed, manifest, [])
    original = (signed / SIGNATURE).read_text()
    sig = json.loads(original)
    for bad in [[], {**sig, "signature": 5}, {**sig, "engines": {}}, {**sig, "engines": [{"file": "x"}]},
                {**sig, "engines": [{"file": "x", "sha256": 1}]}, {**sig, "signature": "not base64!"}]:
        (signed / SIGNATURE).write_text(json.dumps(bad))
        with pytest.raises(PackdError, match="is not a packd signature: refused"):
            verify_signature(signed, manifest, [keys[0][1]])
    (signed / SIGNATURE).write_text(json.dumps({**sig, "signature": base64.b64encode(b"0" * 64).decode()}))
    with pytest.raises(PackdError, match="does not match any trusted key"):
        verify_signature(signed, manifest, [keys[0][1]])
    (signed / SIGNATURE).unlink()
    assert unverified_signature(signed, manifest) is None
    with pytest.raises(PackdError, match=r"is not signed \(manifest.sig missing\): refused, because trusted keys"):
        verify_signature(signed, manifest, [keys[0][1]])


def test_only_engines_present_at_signing_with_unchanged_hashes_are_vouched_for(tmp_path, keys):
    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    for name in ("query", "support"):
        (bundle / f"{name}.plan").write_bytes(name.encode())
    manifest["engines"] = [{"graph": g, "file": f"{g}.plan", "tensorrt": "10.0", "compute_capability": "8.7"}
                           for g in ("query", "support")]
    manifest["files"].update({"query.plan": "1" * 64, "support.plan": "2" * 64})
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    typed = read_manifest(bundle)
    sig = {"algorithm": "ed25519", "engines": [{"file": "query.plan", "sha256": "1" * 64},
                                                {"file": "support.plan", "sha256": "3" * 64}]}
    private = signing._load(keys[0][0], private=True)
    sig["signature"] = base64.b64encode(private.sign(signed_payload(typed, sig["engines"]))).decode()
    (bundle / SIGNATURE).write_text(json.dumps(sig))
    assert verify_signature(bundle, typed, [keys[0][1]]) == {"query.plan"}  # support.plan's hash changed since


def test_a_key_that_is_not_an_ed25519_pem_is_one_line(tmp_path, keys):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    text = tmp_path / "text.pem"
    text.write_text("hello")
    with pytest.raises(PackdError, match="is not a PEM public key"):
        signing._load(text, private=False)
    with pytest.raises(PackdError, match="is not a PEM private key"):
        text.chmod(0o600)
        signing._load(text, private=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other = tmp_path / "ec.pem"
    other.write_bytes(ec_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    other.chmod(0o644)
    with pytest.raises(PackdError, match="is not an Ed25519 public key"):
        signing._load(other, private=False)
    ec_private = tmp_path / "ec_private.pem"
    ec_private.write_bytes(ec_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    ec_private.chmod(0o600)
    with pytest.raises(PackdError, match="is not an Ed25519 private key"):
        signing._load(ec_private, private=True)
    with pytest.raises(PackdError, match="cannot read the public key .*No such file"):
        signing._load(tmp_path / "absent.pem", private=False)


def test_sign_refuses_an_altered_bundle_and_keygen_never_overwrites(tmp_path, keys):
    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    (bundle / "query.onnx").write_bytes(b"x" + (bundle / "query.onnx").read_bytes()[1:])
    with pytest.raises(PackdError, match="altered or corrupted"):
        sign_bundle(bundle, keys[0][0])
    assert not (bundle / SIGNATURE).exists()
    with pytest.raises(PackdError, match="exists: keys are never overwritten"):
        generate_keys(keys[0][0].parent)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / PUBLIC_KEY).write_text("x")
    with pytest.raises(PackdError, match="exists: keys are never overwritten"):
        generate_keys(tmp_path / "half")
    assert not (tmp_path / "half" / PRIVATE_KEY).exists()


def test_a_signed_bundle_scores_as_the_unsigned_one(signed, keys):
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with Detector.open(signed, trusted_keys=[keys[0][1]]) as trusted, Detector.open(signed) as plain:
        for d in (trusted, plain):
            d.prototypes(frames[:2])
        assert np.array_equal(trusted.detect(frames).scores, plain.detect(frames).scores)
    copy = signed.parent / "copy"
    shutil.copytree(signed, copy)
    assert unverified_signature(copy, read_manifest(copy)) is not None


def test_the_signed_bytes_are_canonical_json_without_the_engines_files(tmp_path, keys):
    """The payload's form is part of the format: a signature made by one packd must verify in another, so its
    bytes are pinned (sorted keys, no spaces), and the engines' files are left out of the manifest's file list."""
    bundle = tmp_path / "b"
    write_toy_bundle(bundle)
    raw = json.loads((bundle / MANIFEST).read_text())
    (bundle / "query.plan").write_bytes(b"plan")
    raw["engines"] = [{"graph": "query", "file": "query.plan", "tensorrt": "10.0", "compute_capability": "8.7"}]
    raw["files"]["query.plan"] = __import__("hashlib").sha256(b"plan").hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(raw))
    manifest = read_manifest(bundle)
    engines = [{"file": "query.plan", "sha256": raw["files"]["query.plan"]}]
    payload = signed_payload(manifest, engines)
    view = {k: v for k, v in manifest.to_dict().items() if k != "engines"}
    view["files"] = {k: v for k, v in manifest.files.items() if k != "query.plan"}
    assert payload == json.dumps({"manifest": view, "engines": engines}, sort_keys=True,
                                 separators=(",", ":")).encode()
    assert payload.startswith(b'{"engines":[{"file":"query.plan","sha256":"') and b", " not in payload
    assert set(json.loads(payload)["manifest"]["files"]) == {"query.onnx", "support.onnx"}
    sig = sign_bundle(bundle, keys[0][0])  # the engines present now are vouched for
    assert sig["engines"] == engines and sig["payload_sha256"] == __import__("hashlib").sha256(payload).hexdigest()
    assert verify_signature(bundle, manifest, [keys[0][1]]) == {"query.plan"}


def test_base64_with_foreign_characters_is_no_signature(signed, keys):
    sig = json.loads((signed / SIGNATURE).read_text())
    sig["signature"] = sig["signature"][:8] + "!" + sig["signature"][8:]  # decodes to the same bytes if lenient
    (signed / SIGNATURE).write_text(json.dumps(sig))
    with pytest.raises(PackdError, match=r"manifest.sig is not a packd signature: refused$"):
        verify_signature(signed, read_manifest(signed), [keys[0][1]])


def test_messages_name_the_file_the_key_and_the_fix(signed, keys, tmp_path):
    manifest = read_manifest(signed)
    with pytest.raises(PackdError, match=r"trusted_keys is empty: give at least one public key file, or open "
                                         r"without trusted keys$"):
        verify_signature(signed, manifest, [])
    _edit(signed, threshold=600.0)
    with pytest.raises(PackdError, match=rf"^{signed / SIGNATURE} does not cover this manifest \(changed after "
                                         r"signing, or signed by an older packd\): runtimes with trusted keys refuse "
                                         r"the bundle; sign it again, or remove the signature$"):
        unverified_signature(signed, read_manifest(signed))
    (signed / SIGNATURE).unlink()
    with pytest.raises(PackdError, match=rf"^{signed} is not signed \(manifest.sig missing\): refused, because "
                                         r"trusted keys were given$"):
        verify_signature(signed, manifest, [keys[0][1]])
    public = keys[0][1]
    public.chmod(0o666)
    try:
        with pytest.raises(PackdError, match=rf"^the public key {public} can be written by group or others \(mode "
                                             rf"666\): refused; chmod 644 {public}$"):
            signing._load(public, private=False)
    finally:
        public.chmod(0o644)
    public.chmod(0o645)  # others may execute it: harmless, accepted
    try:
        assert signing._load(public, private=False) is not None
    finally:
        public.chmod(0o644)
    with pytest.raises(PackdError, match=r"^cannot read the public key .*absent.pem: No such file or directory$"):
        signing._load(tmp_path / "absent.pem", private=False)
    text = tmp_path / "text.pem"
    text.write_text("hello")
    with pytest.raises(PackdError, match=r"text.pem is not a PEM public key: (?!None)\w"):
        signing._load(text, private=False)
    exact = tmp_path / "exact.pem"
    exact.write_bytes(b"-" * signing.KEY_FILE_LIMIT)
    with pytest.raises(PackdError, match="is not a PEM public key"):  # at the limit: read, then not a key
        signing._load(exact, private=False)


def test_keygen_makes_missing_folders_and_a_failed_open_keeps_nothing(tmp_path, monkeypatch):
    import errno
    import os

    private, public = generate_keys(tmp_path / "a" / "b" / "c")
    assert private.parent == tmp_path / "a" / "b" / "c" and public.is_file()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(signing.os, "open", full)
    with pytest.raises(PackdError, match=r"cannot write the key pair in .*: No space left on device; nothing was "
                                         r"kept$"):
        generate_keys(tmp_path / "d")
    assert os.listdir(tmp_path / "d") == []
