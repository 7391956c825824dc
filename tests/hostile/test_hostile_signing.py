"""Only trusted bundles: keygen, sign, open with the key; an unsigned bundle, a wrong key or any change after
signing (the threshold, a limit, a file) is refused with one line. Engines added after signing are never loaded."""

import json
import shutil
import stat

import numpy as np
import pytest
from conftest import FRAME

from packd.errors import PackdError
from packd_export.cli import main as export_main
from packd_runtime import Detector
from packd_runtime.files import sha256
from packd_runtime.manifest import read_manifest
from packd_runtime.signing import PRIVATE_KEY, PUBLIC_KEY, SIGNATURE, generate_keys, sign_bundle, verify_signature


@pytest.fixture
def signed(bundles, tmp_path):
    keys = generate_keys(tmp_path / "keys")
    bundle = tmp_path / "bundle"
    shutil.copytree(bundles["packd"][1], bundle)
    sign_bundle(bundle, keys[0])
    return bundle, keys


def _frames(n):
    return np.random.default_rng(0).integers(0, 256, (n, *FRAME, 3), dtype=np.uint8)


def test_keygen_makes_an_owner_only_private_key_and_never_overwrites(tmp_path):
    private, public = generate_keys(tmp_path / "k")
    assert (private.name, public.name) == (PRIVATE_KEY, PUBLIC_KEY)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    before = private.read_bytes()
    with pytest.raises(PackdError, match="never overwritten"):
        generate_keys(tmp_path / "k")
    assert private.read_bytes() == before


def test_a_signed_bundle_opens_with_its_key_and_scores_as_the_unsigned_one(signed, bundles):
    bundle, (private, public) = signed
    with Detector.open(bundle, backend="onnxruntime", trusted_keys=[public]) as det, \
            Detector.open(bundles["packd"][1], backend="onnxruntime") as ref:
        det.prototypes(_frames(2))
        ref.prototypes(_frames(2))
        assert np.array_equal(det.detect(_frames(3)).scores, ref.detect(_frames(3)).scores)
    with Detector.open(bundle, backend="onnxruntime", trusted_keys=public):  # one path is fine too
        pass


def test_unsigned_wrong_key_and_tampered_bundles_are_refused(signed, bundles, tmp_path):
    bundle, (private, public) = signed
    with pytest.raises(PackdError, match="is not signed"):
        Detector.open(bundles["packd"][1], trusted_keys=[public])
    other = generate_keys(tmp_path / "other")[1]
    with pytest.raises(PackdError, match="does not match any trusted key"):
        Detector.open(bundle, trusted_keys=[other])
    Detector.open(bundle, trusted_keys=[other, public]).close()  # any one trusted key is enough
    manifest = json.loads((bundle / "manifest.json").read_text())
    for edit in (lambda m: m.update(threshold=m["threshold"] * 2),  # fewer flagged, no hash changes, in range
                 lambda m: m["prototypes"].update(max_count=1),  # everything flagged
                 lambda m: m["dynamic"]["batch"].__setitem__(1, 2)):
        forged = json.loads(json.dumps(manifest))
        edit(forged)
        (bundle / "manifest.json").write_text(json.dumps(forged))
        with pytest.raises(PackdError, match="changed after it was signed"):
            Detector.open(bundle, trusted_keys=[public])
        Detector.open(bundle).close()  # without keys the bundle still opens: trust is the caller's choice
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / SIGNATURE).write_text("{not json")
    with pytest.raises(PackdError, match="corrupted"):
        Detector.open(bundle, trusted_keys=[public])
    with pytest.raises(PackdError, match="not an Ed25519 public key|not a PEM public key"):
        Detector.open(bundle, trusted_keys=[private])


def test_a_replaced_graph_is_refused_even_with_its_hash_recomputed(signed):
    bundle, (_, public) = signed
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "query.onnx").write_bytes((bundle / "support.onnx").read_bytes())
    manifest["files"]["query.onnx"] = sha256(bundle / "query.onnx")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackdError, match="changed after it was signed"):
        Detector.open(bundle, trusted_keys=[public])


def _add_an_unsigned_engine(bundle):
    """An engine added after signing, as `packd-export build` on the target adds one (hashed in the manifest)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "query.plan").write_bytes(b"a plan nobody vouched for")
    manifest["engines"] = [{"graph": "query", "file": "query.plan", "tensorrt": "10.3", "compute_capability": "87",
                            "gpu": "Orin"}]
    manifest["files"]["query.plan"] = sha256(bundle / "query.plan")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_engines_added_after_signing_are_not_trusted(signed):
    bundle, (private, public) = signed
    manifest = _add_an_unsigned_engine(bundle)
    assert verify_signature(bundle, read_manifest(bundle), [public]) == set()  # valid, but vouches for no engine
    sign_bundle(bundle, private)  # signed again after the build: now it does
    assert verify_signature(bundle, read_manifest(bundle), [public]) == {"query.plan"}
    manifest["engines"][0]["file"] = "query.onnx"  # an "engine" that is really a graph file: the view changes
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PackdError, match="changed after it was signed"):
        verify_signature(bundle, read_manifest(bundle), [public])


def test_the_triton_writer_serves_only_engines_the_signature_vouched_for(signed, tmp_path):
    """With trusted keys, an engine added after signing never becomes the tensorrt_plan model (its graph is served
    as ONNX); signed again, it does."""
    from packd_export.triton import write_repository

    bundle, (private, public) = signed
    _add_an_unsigned_engine(bundle)
    models = write_repository(bundle, tmp_path / "repo", backend="onnxruntime", trusted_keys=[public])
    assert models["query"] == "onnxruntime_onnx" and not (tmp_path / "repo" / "query" / "1" / "model.plan").exists()
    sign_bundle(bundle, private)
    models = write_repository(bundle, tmp_path / "repo", backend="onnxruntime", trusted_keys=[public])
    assert models["query"] == "tensorrt_plan"


def test_the_signing_commands_end_to_end(bundles, tmp_path, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(bundles["rd"][1], bundle)
    for argv in (["keygen", "--out", str(tmp_path / "k")],
                 ["sign", str(bundle), "--key", str(tmp_path / "k" / PRIVATE_KEY)],
                 ["check", str(bundle), "--key", str(tmp_path / "k" / PUBLIC_KEY)]):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == 0, capsys.readouterr().err
    assert "signed by a trusted key" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit) as e:
        export_main(["check", str(bundle)])
    assert e.value.code == 0 and "not verified: give --key to verify" in " ".join(capsys.readouterr().out.split())
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["threshold"] *= 2  # within the normal scores' range: only the signature can tell
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as e:
        export_main(["check", str(bundle), "--key", str(tmp_path / "k" / PUBLIC_KEY)])
    assert e.value.code == 2 and "changed after it was signed" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit) as e:  # without a key: a stale signature is no plain "ok" (issue 31)
        export_main(["check", str(bundle)])
    assert e.value.code == 2 and "does not cover this manifest" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(PackdError, match="altered or corrupted"):  # never sign a bundle altered since export
        (bundle / "query.onnx").write_bytes(b"x" + (bundle / "query.onnx").read_bytes()[1:])
        sign_bundle(bundle, tmp_path / "k" / PRIVATE_KEY)


def test_the_triton_line_model_takes_the_same_keys(signed, bundles, tmp_path):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    from packd_export.triton import LINE_MODEL, write_repository
    from packd_runtime.triton.line_model import TritonPythonModel

    bundle, (_, public) = signed
    with pytest.raises(PackdError, match="is not signed"):  # refused when written, not when the server starts
        write_repository(bundles["packd"][1], tmp_path / "unsigned_repo", trusted_keys=[public])
    write_repository(bundle, tmp_path / "repo", trusted_keys=[public])
    line = tmp_path / "repo" / LINE_MODEL
    config = text_format.Parse((line / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    args = {"model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(line), "model_version": "1"}
    model = TritonPythonModel()
    model.initialize(args)
    with Detector.open(bundle) as det:
        assert model.server.detector.fingerprint == det.fingerprint
    copied = line / "1" / "bundle" / "manifest.json"
    manifest = json.loads(copied.read_text())
    manifest["threshold"] *= 2
    copied.write_text(json.dumps(manifest))
    with pytest.raises(PackdError, match="changed after it was signed"):
        TritonPythonModel().initialize(args)
