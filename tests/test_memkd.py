import torch
from conftest import train_small
from safetensors.torch import load_file

from packd.methods.memkd.model import MemKD, NRMemory
from packd.models.loading import load_model
from packd.models.student_plan import plan_for


def test_memory_recalls_its_values():
    mem = NRMemory(4, slots=4, temperature=0.01)
    with torch.no_grad():
        mem.keys.copy_(torch.eye(4))
        mem.values.copy_(torch.eye(4) * 5)
    x = torch.eye(4)[[2]].view(1, 4, 1, 1) * 3  # a query aligned with key 2
    assert torch.allclose(mem(x).flatten(), torch.eye(4)[2] * 5, atol=1e-3)


def test_memorisation_loss_is_zero_for_remembered_features(effnet_teacher):
    model = MemKD(effnet_teacher, plan_for(effnet_teacher), slots=8, temperature=0.01)
    feats = []
    with torch.no_grad():
        for mem in model.memories:
            c = mem.keys.shape[1]
            basis = torch.eye(c)[:8]
            mem.keys.copy_(basis)
            mem.values.copy_(basis)
            feats.append(basis[3].view(1, c, 1, 1).expand(1, c, 2, 2).clone())
    assert model.memorisation_loss(feats[::-1]).item() < 1e-4


def test_memory_trains_and_is_checkpointed(synth_root, tmp_path):
    out = train_small("memkd", synth_root, "grid", tmp_path / "mk", epochs=1, batch_size=4, slots=6, exemplars=4)
    torch.manual_seed(0)  # the same seed train_memkd used: the initial memory
    from packd.models.teachers import create_teacher

    teacher = create_teacher("tf_efficientnet_lite0")
    fresh = MemKD(teacher, plan_for(teacher), slots=6)
    trained, cfg = load_model(out)
    assert cfg["kind"] == "memkd" and cfg["settings"]["slots"] == 6 and cfg["settings"]["temperature"] == 0.1
    names = {n for n, _ in trained.named_parameters()}
    assert {"memories.0.keys", "memories.0.values", "memories.2.keys"} <= names
    saved = load_file(str(out / "model.safetensors"))
    for i in range(3):
        assert saved[f"memories.{i}.keys"].shape == (6, trained.plan.channels[::-1][i])
        assert not torch.allclose(saved[f"memories.{i}.keys"], fresh.memories[i].keys.detach())
        assert not torch.allclose(saved[f"memories.{i}.values"], fresh.memories[i].values.detach())
        assert torch.equal(saved[f"memories.{i}.values"], trained.memories[i].values.detach())
    t, s = trained(torch.randn(2, 3, 64, 64))
    assert [a.shape for a in s] == [b.shape for b in t]
