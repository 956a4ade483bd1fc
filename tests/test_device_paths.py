"""What a GPU would break, caught on the CPU (issue 17): checkpoints restored through the CPU whatever the
run's device, loader generator states from any device, augmentation that seeds only its own generator."""
from __future__ import annotations

import pytest
import torch

from conftest import StopAfter, tiny_config
from cvlab.core import engine

QUIET = dict(log=lambda line: None)


# ---------------------------------------------------------------------------- resume through the CPU

def test_resume_restores_the_checkpoint_through_the_cpu_whatever_the_device(tmp_path, monkeypatch):
    """A run on an accelerator resumes: the checkpoint is read to the CPU and each load_state_dict places its
    tensors. The trainer's device is made to look like "meta" (no data): had the engine loaded last.pt with
    map_location=t.device, as it did, the loader's generator states would arrive as meta tensors and
    Generator.set_state would refuse them (TypeError), as it refuses CUDA and NPU tensors."""
    out = tmp_path / "run"
    cfg = tiny_config(epochs=2, crop_padding=4, hflip=True, synthetic_train=100, eval_batch_size=50,
                      synthetic_test=50)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, out, on_epoch_end=StopAfter(1), **QUIET)
    build = engine.build_trainer
    seen = []

    def on_meta(cfg, data=None):
        t = build(cfg, data)
        t.device = torch.device("meta")  # what map_location=t.device would have mapped to
        return t

    def spy(run, which="last", map_location="cpu"):
        state = original(run, which, map_location)
        seen.append({t.device.type for t in _tensors(state)})
        return state

    original = engine.RunDir.load_checkpoint
    monkeypatch.setattr(engine, "build_trainer", on_meta)
    monkeypatch.setattr(engine.RunDir, "load_checkpoint", spy)
    engine.fit(None, out, resume=True, **QUIET)
    assert seen == [{"cpu"}]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_loader_state_accepts_generator_states_of_any_device_and_dtype():
    """Generator.set_state takes only CPU uint8 tensors; a state that went through another device or dtype
    (a checkpoint mapped to the GPU, a state saved as int64) is converted, not refused."""
    from cvlab.core.data import Split, TensorLoader
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(20) % 100
    split = Split(images, labels, labels)
    first = TensorLoader(split, 8, torch.device("cpu"), "cifar100", shuffle=True, seed=1)
    state = first.state_dict()
    expected = [y.clone() for _, y in first]
    again = TensorLoader(split, 8, torch.device("cpu"), "cifar100", shuffle=True, seed=7)
    again.load_state_dict({k: v.long() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    assert all(torch.equal(y, e) for (_, y), e in zip(again, expected))
