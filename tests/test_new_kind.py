"""Adding a kind is one folder and one registry entry: a kind written into a folder of its own (here a temporary
one on packd.methods' search path) and one `Method` entry trains, exports to a bundle and runs in the runtime with
no other change."""

import sys
import textwrap

import numpy as np
import pytest
from conftest import SMALL, TEACHER

import packd.methods
from packd.methods import METHODS, Method
from packd.training.train import configure, train

FILES = {
    "__init__.py": '"""featnorm: how far the deepest teacher feature\'s norm is from its mean."""\n',
    "settings.py": '''
        from dataclasses import dataclass

        from packd.training.settings import setting, validate


        @dataclass(frozen=True)
        class FeatNormSettings:
            """Nothing to learn: the normal norm is measured on the fly."""

            scale: float = setting(1.0, "Scale of the distance.", gt=0)

            def __post_init__(self) -> None:
                validate(self)


        PRESETS = {}
        ''',
    "model.py": '''
        import torch
        from torch import nn


        class FeatNorm(nn.Module):
            def __init__(self, teacher: nn.Module, scale: float):
                super().__init__()
                self.teacher, self.scale = teacher, scale

            @torch.no_grad()
            def distances(self, x: torch.Tensor, prototypes: list) -> list[torch.Tensor]:
                norm = self.teacher(x)[2].float().norm(dim=1)
                return [self.scale * (norm - norm.mean()).abs()]
        ''',
    "training.py": '''
        from packd.methods.featnorm.model import FeatNorm
        from packd.methods.featnorm.settings import FeatNormSettings


        def build(teacher, settings: FeatNormSettings):
            return FeatNorm(teacher, settings.scale), settings
        ''',
}


@pytest.mark.slow
def test_a_new_kind_is_one_folder_and_one_registry_entry(synth_root, tmp_path, monkeypatch):
    from packd_export.bundle import export_bundle
    from packd_runtime import Detector

    folder = tmp_path / "featnorm"
    folder.mkdir()
    for name, text in FILES.items():
        (folder / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(packd.methods, "__path__", [*packd.methods.__path__, str(tmp_path)])
    from packd.methods.featnorm.settings import PRESETS, FeatNormSettings  # found through the search path

    monkeypatch.setitem(METHODS, "featnorm", Method("featnorm", "feature norm", FeatNormSettings, few_shot=False,
                                                    presets=PRESETS))
    try:
        run, settings = configure("featnorm", **SMALL, scale=2.0)
        assert run.teacher == TEACHER and settings.scale == 2.0
        ckpt = train("featnorm", data=synth_root, categories="grid", out=tmp_path / "ckpt", run=run,
                     settings=settings, progress=False)
        manifest = export_bundle(ckpt, tmp_path / "bundle", max_batch=2, engines="never")
        assert manifest.kind == "featnorm" and list(manifest.graphs) == ["query"]
        frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
        with Detector.open(tmp_path / "bundle", backend="onnxruntime") as det:
            result = det.detect(frames)
        assert result.scores.shape == (3,) and result.maps.shape == (3, 64, 64) and np.isfinite(result.scores).all()
    finally:
        for name in [m for m in sys.modules if m.startswith("packd.methods.featnorm")]:
            del sys.modules[name]
