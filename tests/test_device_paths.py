"""What a GPU would break, caught on the CPU (issue 17): checkpoints restored through the CPU whatever the
run's device, loader generator states from any device, augmentation that seeds only its own generator."""
from __future__ import annotations

import ast
from types import SimpleNamespace

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
    from cvlab.core.data import Split
    from cvlab.core.loader import TensorLoader
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(20) % 100
    split = Split(images, labels, labels)
    first = TensorLoader(split, 8, torch.device("cpu"), "cifar100", shuffle=True, seed=1)
    state = first.state_dict()
    expected = [y.clone() for _, y in first]
    again = TensorLoader(split, 8, torch.device("cpu"), "cifar100", shuffle=True, seed=7)
    again.load_state_dict({k: v.long() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    assert all(torch.equal(y, e) for (_, y), e in zip(again, expected))


# ---------------------------------------------------------------------------- resume across device kinds

CUDA_GENERATOR_STATE = torch.zeros(16, dtype=torch.uint8)  # what a CUDA (or NPU) generator's get_state() returns


def test_a_run_saved_on_a_gpu_resumes_on_the_cpu_exactly_as_an_uninterrupted_run(tmp_path):
    """device=auto is CUDA on the GPU server and the CPU on a laptop: last.pt written on CUDA held a 16-byte
    device-generator state that the CPU's generator (5,056 bytes) refused ("the checkpoint does not fit this
    run"). The loader saves no device generator now; an older checkpoint's is ignored. The draws follow from
    (seed, pass), so the resumed run repeats the uninterrupted one exactly."""
    from cvlab.core.runs import load_checkpoint, load_run, save_checkpoint
    cfg = tiny_config(epochs=2, crop_padding=4, hflip=True, policy="trivialaugment", cutout=8, mix="mixup",
                      synthetic_train=100, eval_batch_size=50, synthetic_test=50)
    timing = ["epoch_seconds", "images_per_second"]
    whole = load_run(engine.fit(cfg, tmp_path / "whole", **QUIET)).history.drop(columns=timing)
    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, tmp_path / "cut", on_epoch_end=StopAfter(1), **QUIET)
    last = tmp_path / "cut" / "last.pt"
    state = load_checkpoint(last)
    state["loader"].update(augment=CUDA_GENERATOR_STATE, host=torch.get_rng_state())  # as CUDA wrote them
    save_checkpoint(last, state)
    resumed = load_run(engine.fit(None, tmp_path / "cut", resume=True, **QUIET))
    assert resumed.metrics["status"] == "complete"
    import pandas as pd
    pd.testing.assert_frame_equal(resumed.history.drop(columns=timing), whole)


def test_a_loader_on_a_gpu_takes_a_state_written_on_the_cpu():
    """The other direction: the loader's state holds only CPU generators and the pass count (the same bytes on
    every device), and loading it never sets the device generator, whose state size is device-specific."""
    from cvlab.core.data import Split
    from cvlab.core.loader import TensorLoader
    labels = torch.arange(8)
    split = Split(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), labels, labels)
    cpu = TensorLoader(split, 4, torch.device("cpu"), "cifar100", shuffle=True, augment=lambda x, g, h: x)
    state = cpu.state_dict()
    assert set(state) == {"order", "mix", "epoch"}
    assert all(v.numel() == torch.Generator().get_state().numel() for k, v in state.items() if k != "epoch")

    class DeviceGenerator:  # a CUDA generator as Generator.set_state sees a CPU state: the wrong size
        def set_state(self, new_state):
            raise RuntimeError(f"RNG state is wrong size ({new_state.numel()} bytes, expected 16)")

        def manual_seed(self, seed):
            return self

    gpu = TensorLoader(split, 4, torch.device("cpu"), "cifar100", shuffle=True, augment=lambda x, g, h: x)
    gpu.augment_generator = gpu.host_generator = DeviceGenerator()
    gpu.load_state_dict(state)
    assert gpu.epoch == cpu.epoch


# ---------------------------------------------------------------------------- augmentation seeds only its own generator

def test_apply_policy_seeds_only_the_cpu_generator_it_forks(monkeypatch):
    """torch.manual_seed would also reseed every CUDA generator (and fork_rng(devices=[]) would not restore
    them): a policy batch on a GPU would reset the CUDA RNG that dropout and the device draws use."""
    from cvlab.core import augment as aug
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    before = torch.get_rng_state()
    aug.apply_policy(x, aug.make_policy("trivialaugment"), torch.Generator().manual_seed(0))
    assert reseeded == [] and torch.equal(torch.get_rng_state(), before)


def test_policy_seeds_come_from_the_loaders_host_generator():
    """On a device the policy's per-batch seed is drawn from a CPU generator (no .item() on a device tensor),
    re-seeded with the device generator at every pass, so a resumed run repeats the draws."""
    from cvlab.core import augment as aug
    from cvlab.core.config import make_config
    from cvlab.core.data import Split
    from cvlab.core.loader import TensorLoader
    augment = aug.build_augment(make_config("handout", policy="trivialaugment", crop_padding=4))
    host = torch.Generator().manual_seed(5)
    device_generator = torch.Generator().manual_seed(9)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    before = device_generator.get_state()
    first = augment(x, device_generator, host)
    assert not torch.equal(device_generator.get_state(), before)  # the crop drew from the device generator
    again = augment(x, torch.Generator().manual_seed(9), torch.Generator().manual_seed(5))
    assert torch.equal(first, again)
    labels = torch.arange(8)
    loader = TensorLoader(Split(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), labels, labels), 4,
                          torch.device("cpu"), "cifar100", augment=augment)
    assert loader.host_generator is loader.augment_generator  # on the CPU: one generator, as before
    assert "host" not in loader.state_dict()


# ---------------------------------------------------------------------------- host-device traffic per batch, counted

# What a batch may cost the host, counted below on the CPU as a GPU would pay it: `lift_fresh` is a tensor made from
# Python values (torch.tensor(...), on a GPU a host-to-device copy), `_local_scalar_dense` a value read back (.item(),
# on a GPU a sync). The lint above reads only cvlab's code; this sees torchvision's too. Measured (tiny model, crop,
# flip, cutout, TrivialAugment batched by op, Mixup/CutMix, label smoothing, EMA, one-cycle): 19 copies and 0 reads
# per batch at every batch size; torchvision's policy called per image (policy_group=1): ~300 at 64 images, ~1,160 at 256.
TRAFFIC = {"lift_fresh", "lift_fresh_copy", "_local_scalar_dense"}
COPIES_PER_BATCH = 24  # the 13 ops that transform build at most 19 small tensors; a per-image one adds >= 128


def traffic_per_batch(batch_size: int, **overrides) -> dict:
    """Host-device operations per training batch (loader pass with augmentation and mixing, then the step),
    after a first batch that builds the one-time constants."""
    import collections
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in TRAFFIC:
                self.counts[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    cfg = tiny_config(batch_size=batch_size, synthetic_train=3 * batch_size, crop_padding=4, hflip=True, cutout=8,
                      policy="trivialaugment", mix="mixup_cutmix", mix_prob=1.0, label_smoothing=0.1,
                      ema_decay=0.9, optimizer="sgd", schedule="onecycle", **overrides)
    t = engine.build_trainer(cfg)
    batches = iter(t.train_loader)
    t.train_step.step(*next(batches))
    with Count() as mode:
        for x, y in batches:
            t.train_step.step(x, y)
    return {name: count / 2 for name, count in mode.counts.items()}


@pytest.mark.parametrize("batch_size", [32, 128])
def test_a_training_batch_costs_a_fixed_small_number_of_host_device_copies(batch_size):
    counts = traffic_per_batch(batch_size)
    assert counts.get("_local_scalar_dense", 0) == 0, counts
    assert counts.get("lift_fresh", 0) + counts.get("lift_fresh_copy", 0) <= COPIES_PER_BATCH, counts


def test_the_traffic_count_sees_torchvision_per_image():
    """The check can fail: torchvision's own policy called per image (policy_group=1) builds tensors per image."""
    counts = traffic_per_batch(32, policy_group=1)
    assert counts.get("lift_fresh", 0) > COPIES_PER_BATCH and counts.get("_local_scalar_dense", 0) > 32


# ---------------------------------------------------------------------------- compile: no graph after the warm-up

class GraphCounter:
    """A torch.compile backend that runs each graph eagerly and records which were compiled and which ran."""

    def __init__(self):
        self.compiled, self.used = 0, set()

    def __call__(self, gm, example_inputs):
        index = self.compiled
        self.compiled += 1

        def run(*args):
            self.used.add(index)
            return gm.forward(*args)
        return run


def test_no_graph_is_compiled_after_the_warm_up(monkeypatch):
    """With compile on (backend "eager": dynamo traces, nothing is generated), the warm-up compiles exactly the
    graphs the run uses: two epochs with a partial last training batch, a validation split whose last batch
    differs from the test set's, test-time flip and an EMA compile no new graph, and every warm-up graph runs."""
    import dataclasses
    import torch._dynamo
    from cvlab.core import device as devices
    counter = GraphCounter()
    real_compile, real_plan = torch.compile, devices.make_plan
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real_compile(model, backend=counter, dynamic=False))
    monkeypatch.setattr(devices, "make_plan", lambda cfg, caps: dataclasses.replace(real_plan(cfg, caps), compile=True))
    torch._dynamo.reset()
    try:
        # 300 synthetic images - 200 for validation = 100 training (batches 64 + 36); validation 200 (64 x 3 + 8);
        # test 100 (64 + 36).
        cfg = tiny_config(epochs=2, batch_size=64, eval_batch_size=64, val_size=200, synthetic_train=300,
                          synthetic_test=100, tta_flip=True, ema_decay=0.9, crop_padding=4, hflip=True)
        t = engine.build_trainer(cfg)
        assert t.warmup_seconds > 0 and t.eval_step.model is not t.ema.module  # the EMA evaluates compiled
        warmed = counter.compiled
        counter.used.clear()
        for epoch in (1, 2):
            engine.run_epoch(t, epoch)
        assert counter.compiled == warmed, "a graph was compiled inside the timed epochs"
        assert counter.used == set(range(warmed)), "the warm-up compiled a graph the run never uses"
    finally:
        torch._dynamo.reset()


# ---------------------------------------------------------------------------- device placement on fake CUDA tensors

def test_batches_steps_and_metrics_stay_on_the_device_with_fake_cuda_tensors(monkeypatch):
    """The whole training step on fake CUDA tensors (FakeTensorMode works on a CPU-only torch): a CPU constant
    meeting a device tensor raises here as on a GPU. Covered: augmentation, batch mixing and the loader's
    normalization; `train_one_epoch` with a bf16 TrainStep: autocast on the (fake) CUDA device (bf16 logits, the
    fp32 loss of `logits.float()`), label smoothing on soft targets, the per-step LR schedule, the optimizer's
    foreach kernels and its state, the weight EMA (`_foreach_lerp_`), the epoch's metrics kept on the device;
    EvalStep and `evaluate` on the model and on the EMA copy under bf16.

    Not covered, as a CPU torch cannot run it: backward (autograd asks the CUDA driver for a context: replaced
    by fake gradients on the device), the fused optimizer kernels (a CPU build has no CUDA kernels to dispatch
    to; foreach is the kernel path checked), fp16 with its GradScaler (it reads found_inf with .item()), CUDA
    generators (torch.Generator cannot be made for CUDA without CUDA: the loader's device generator is a CPU
    one here, and fake random ops ignore it), torchvision's policies (they read values), and anything that
    reads values: the epoch's final reads (.item() answered 1 below), the host's own draws from CPU generators
    (run outside the fake mode below), torch.cuda.synchronize (a no-op below); the EMA's deepcopy of the model
    (a twin built on the device stands in: see twin_on). Skipped where this torch cannot
    make a fake CUDA tensor without a driver (torch 2.1's CUDA builds)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from cvlab.core import augment as aug
    from cvlab.core import device as devices
    from cvlab.core import distributed
    from cvlab.core.config import make_config
    from cvlab.core.data import Split
    from cvlab.core import ema as ema_module
    from cvlab.core.loader import TensorLoader
    from cvlab.core.models import build_model
    from cvlab.core.optim import build_optimizer, build_scheduler
    cuda = torch.device("cuda")
    skip_without_fake_cuda(cuda)
    real_generator = torch.Generator

    def generator(device="cpu"):
        return real_generator()  # no CUDA generator without CUDA; fake random ops do not read it
    monkeypatch.setattr(distributed, "sum_counts", lambda loss, right, right5, seen: (loss, right, right5, seen))
    monkeypatch.setattr(devices, "synchronize", lambda device: None)
    monkeypatch.setattr(torch, "autocast", autocast_on_a_fake_device(monkeypatch))
    for name in ("host_seed", "host_uniform", "cutmix_box"):  # host values: real CPU draws, outside the fake mode
        monkeypatch.setattr(aug, name, on_the_host(getattr(aug, name)))
    aug.fill_colour.cache_clear()
    cfg = make_config("fast", crop_padding=4, hflip=True, cutout=8, mix="mixup_cutmix", mix_prob=1.0,
                      precision="bf16", label_smoothing=0.1, ema_decay=0.9, model="tiny_resnet18")
    with FakeTensorMode(allow_non_fake_inputs=True):
        images = torch.zeros(10, 3, 32, 32, dtype=torch.uint8)
        labels = torch.zeros(10, dtype=torch.long)
        with monkeypatch.context() as patch:
            patch.setattr(torch, "Generator", generator)  # only while the loaders are built
            loader = TensorLoader(Split(images, labels, labels), 4, cuda, "cifar100", shuffle=True,
                                  augment=aug.build_augment(cfg), mix=aug.build_mix(cfg), channels_last=True)
            test = TensorLoader(Split(images, labels, labels), 4, cuda, "cifar100")
        for x, y in loader:
            assert x.device.type == y.device.type == "cuda" and y.shape[1] == 100
        with cuda:  # parameters made on the (fake) device
            model = build_model(cfg.model)  # (channels_last weights: .to() cannot swap fake parameters)
        assert next(model.parameters()).device.type == "cuda"
        optimizer = build_optimizer(cfg, model, {"foreach": True})
        with monkeypatch.context() as patch:  # the EMA's copy of the model: a twin built on the device
            patch.setattr(ema_module, "copy", SimpleNamespace(deepcopy=lambda m: twin_on(cuda, cfg.model, m)))
            ema = ema_module.WeightEMA(model, cfg.ema_decay)
        step = engine.TrainStep(model, optimizer, cuda, "bf16", None, cfg.label_smoothing,
                                build_scheduler(cfg, optimizer, len(loader)), ema)
        seen = record_training(monkeypatch, step)
        with monkeypatch.context() as patch, ForeachOps() as foreach:
            patch.setattr(torch.Tensor, "item", lambda self: 1)  # the epoch's final reads
            result = engine.train_one_epoch(step, loader)
        assert seen["logits"] == [(torch.bfloat16, "cuda")] * len(loader)  # autocast ran on the device
        assert seen["loss"] == [(torch.float32, "cuda")] * len(loader)
        assert result["loss"].device.type == result["acc"].device.type == result["top5"].device.type == "cuda"
        assert result["nonfinite_step"] is None and ema.updates == len(loader)
        state = [t for s in optimizer.state.values() for k, t in s.items() if k != "step" and torch.is_tensor(t)]
        assert state and {t.device.type for t in state} == {"cuda"}  # momentum buffers on the device
        assert {t.device.type for t in ema.module.state_dict().values()} == {"cuda"}
        # The optimizer's and the EMA's foreach kernels ran on the device (step counters, if any, on the CPU).
        assert "_foreach_lerp_" in foreach.ops and len(foreach.ops) >= 2, foreach.ops
        assert all("cuda" in kinds for kinds in foreach.ops.values()), foreach.ops
        for weights in (model, ema.module):
            result = engine.evaluate(engine.EvalStep(weights, cuda, "bf16", tta_flip=True), test)
            assert result["loss"].dtype == torch.float32
            assert result["loss"].device.type == result["acc"].device.type == "cuda"
    aug.fill_colour.cache_clear()  # it holds fake tensors now


def twin_on(device: torch.device, name: str, model):
    """A fresh `name` model on `device` holding `model`'s state: what copy.deepcopy gives, without deep-copying
    fake tensors (that corrupted the heap at the interpreter's exit here, torch 2.14)."""
    from cvlab.core.models import build_model
    with device:
        twin = build_model(name)
    twin.load_state_dict(model.state_dict())
    return twin


def skip_without_fake_cuda(cuda: torch.device) -> None:
    """Skip where this torch cannot move a fake tensor to CUDA without a driver (torch 2.1's CUDA builds call the
    CUDA runtime for it); the reason quotes its error."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    try:
        with FakeTensorMode():
            torch.zeros(1).to(cuda)
    except (RuntimeError, AssertionError) as error:
        pytest.skip(f"torch {torch.__version__} cannot make a fake CUDA tensor here: "
                    f"{str(error).splitlines()[0]}")


def autocast_on_a_fake_device(monkeypatch):
    """torch.autocast that accepts device_type "cuda" on a machine without CUDA: it would otherwise disable
    itself with a warning (torch.cuda.is_available() is False, and bf16 support cannot be asked). Only its
    construction sees CUDA as available; entering it sets the real autocast state for CUDA."""
    real = torch.autocast

    class FakeDeviceAutocast(real):
        def __init__(self, *args, **kwargs):
            with monkeypatch.context() as patch:
                patch.setattr(torch.cuda, "is_available", lambda: True)
                patch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
                super().__init__(*args, **kwargs)
    return FakeDeviceAutocast


def record_training(monkeypatch, step) -> dict:
    """Record each step's logits and loss (dtype, device kind) and replace backward by fake gradients: ones on
    each parameter's device, as autograd would leave them (fp32 parameters get fp32 gradients under autocast)."""
    seen: dict[str, list] = {"logits": [], "loss": []}
    forward = step.model.forward

    def recorded_forward(x):
        logits = forward(x)
        seen["logits"].append((logits.dtype, logits.device.type))
        return logits

    def fake_backward(loss, *args, **kwargs):
        seen["loss"].append((loss.dtype, loss.device.type))
        for p in step.model.parameters():
            p.grad = torch.ones_like(p)
    monkeypatch.setattr(step.model, "forward", recorded_forward)
    monkeypatch.setattr(torch.Tensor, "backward", fake_backward)
    return seen


class ForeachOps:
    """A dispatch mode (entered inside the fake mode) that records each _foreach_* op with the device kinds of
    its tensors."""

    def __init__(self) -> None:
        self.ops: dict[str, set] = {}
        self._mode = None

    def __enter__(self) -> "ForeachOps":
        from torch.utils._python_dispatch import TorchDispatchMode
        ops = self.ops

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name.startswith("_foreach"):
                    flat = [t for a in args for t in (a if isinstance(a, (list, tuple)) else [a])]
                    ops.setdefault(name, set()).update(t.device.type for t in flat if isinstance(t, torch.Tensor))
                return func(*args, **(kwargs or {}))
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


def on_the_host(function):
    """`function` run outside the fake mode: what the host computes from CPU generators stays real."""
    try:
        from torch._subclasses.fake_tensor import unset_fake_temporarily
    except ImportError:  # torch < 2.2: leave every dispatch mode (only the fake mode is on here)
        from torch.utils._python_dispatch import _disable_current_modes as unset_fake_temporarily

    def run(*args, **kwargs):
        with unset_fake_temporarily():
            return function(*args, **kwargs)
    return run


# ---------------------------------------------------------------------------- static check of the hot paths

# (module file, qualified function name, whole body or only its loops): what runs once per batch.
HOT_PATHS = [
    ("core/engine.py", "TrainStep.step", "body"), ("core/engine.py", "EvalStep.logits", "body"),
    ("core/engine.py", "train_one_epoch", "loops"), ("core/engine.py", "evaluate", "loops"),
    ("core/engine.py", "_top_k_correct", "body"), ("core/ema.py", "WeightEMA.update", "body"),
    ("core/loader.py", "TensorLoader.__iter__", "loops"), ("core/loader.py", "TensorLoader.to_float", "body"),
    *[("core/augment.py", name, "body") for name in (
        "random_crop", "random_hflip", "cutout", "apply_policy", "PolicyStep.__call__", "compose", "mix_pairs",
        "paste_box", "mixup", "cutmix", "cutmix_box", "partner_order", "sample_beta", "host_seed", "host_uniform",
        "build_mix", "policy_stages", "_apply_stage", "_magnitude", "one_hot")],
]
SYNC_OK = "sync-ok"  # a comment on the line (or the one above) that says why a flagged call is fine


def _functions(tree):
    """qualified name -> FunctionDef, for module-level functions and methods."""
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef):
            found.update({f"{node.name}.{f.name}": f for f in node.body if isinstance(f, ast.FunctionDef)})
    return found


def _flag(call: ast.Call) -> str | None:
    """Why `call` may make the host wait for the device (or copy host data to it), or None."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr in ("item", "tolist") and not call.args:
        return f".{func.attr}()"
    if isinstance(func, ast.Attribute) and func.attr in ("tensor", "as_tensor") and any(
            k.arg == "device" for k in call.keywords):
        return f"torch.{func.attr}(..., device=...)"
    if isinstance(func, ast.Attribute) and func.attr == "to":
        targets = [ast.unparse(a) for a in call.args[:1]] + [ast.unparse(k.value) for k in call.keywords
                                                               if k.arg == "device"]
        if any("device" in t for t in targets):
            return ".to(device)"
    return None


def test_no_host_device_sync_per_batch_in_the_hot_paths():
    """No .item(), .tolist(), torch.tensor(..., device=...) or .to(device) once per batch in the training step,
    the epoch loops, the loader and the augmentations, except where a `# sync-ok: why` comment says why (a CPU
    generator, a no-op on the CPU, the progress bar's live loss every log_every steps)."""
    from cvlab.core.paths import REPO_ROOT
    offenders = []
    for path, name, scope in HOT_PATHS:
        source = (REPO_ROOT / "cvlab" / path).read_text()
        lines = source.splitlines()
        functions = _functions(ast.parse(source))
        assert name in functions, f"{path}: {name} not found (renamed? update HOT_PATHS)"
        roots = [functions[name]] if scope == "body" else [n for n in ast.walk(functions[name])
                                                            if isinstance(n, (ast.For, ast.While))]
        for root in roots:
            for node in ast.walk(root):
                reason = isinstance(node, ast.Call) and _flag(node)
                if reason and not any(SYNC_OK in lines[i] for i in (node.lineno - 1, node.lineno - 2)):
                    offenders.append(f"{path}:{node.lineno} {name}: {reason}: {lines[node.lineno - 1].strip()}")
    assert not offenders, "host-device syncs per batch:\n" + "\n".join(offenders)


# ---------------------------------------------------------------------------- the GPU tests collect without the report extras

@pytest.mark.slow
def test_the_gpu_tests_collect_without_the_report_extras(tmp_path):
    """`python -m pytest -m gpu` on a machine without nbformat/papermill/nbconvert (the H200 image has none):
    every test module imports, and the GPU tests are collected (they skip later without CUDA)."""
    import subprocess
    import sys
    from cvlab.core.paths import REPO_ROOT
    hide = tmp_path / "hide"
    hide.mkdir()
    # A sitecustomize that makes the report extras unimportable, as on a machine that lacks them.
    (hide / "sitecustomize.py").write_text(
        "import sys\nfor name in ('nbformat', 'papermill', 'nbconvert', 'ipykernel'):\n    sys.modules[name] = None\n")
    env = {**__import__("os").environ, "PYTHONPATH": f"{hide}:{REPO_ROOT}"}
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                             "-o", "addopts=", str(REPO_ROOT / "tests")], capture_output=True, text=True, env=env,
                            cwd=REPO_ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = [line for line in result.stdout.splitlines() if line.startswith("tests/test_gpu.py::")]
    assert len(collected) >= 10, result.stdout[-3000:]
    probe = subprocess.run([sys.executable, "-c", "import nbformat"], capture_output=True, env=env, timeout=60)
    assert probe.returncode != 0  # the extras really were hidden


# ---------------------------------------------------------------------------- end-to-end wall time

def test_metrics_record_the_end_to_end_wall_time_and_an_honest_projection(tmp_path):
    """total_seconds sums the epochs only; wall_seconds adds start-up and the saving after each epoch, and
    projected_wall_seconds = start-up + planned epochs x (mean epoch + mean save), from the epochs done."""
    import json
    import time
    out = tmp_path / "run"
    cfg = tiny_config(epochs=4, synthetic_train=100, synthetic_test=50, eval_batch_size=50)
    start = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        engine.fit(cfg, out, on_epoch_end=StopAfter(2), **QUIET)
    outside = time.perf_counter() - start
    m = json.loads((out / "metrics.json").read_text())
    assert m["status"] == "interrupted" and m["epochs_done"] == 2
    assert m["startup_seconds"] > 0 and m["save_seconds"] > 0
    assert m["total_seconds"] + m["startup_seconds"] + m["save_seconds"] <= m["wall_seconds"] + 0.05
    assert m["wall_seconds"] <= outside + 0.005  # wall_seconds is rounded to 0.01 s
    saves = m["save_seconds"] / 2
    expected = m["startup_seconds"] + 4 * (m["total_seconds"] / 2 + saves)
    assert m["projected_wall_seconds"] == pytest.approx(expected, abs=0.2)
    engine.fit(None, out, resume=True, **QUIET)  # a resumed run adds its wall time to the earlier sessions'
    assert json.loads((out / "metrics.json").read_text())["wall_seconds"] > m["wall_seconds"]
