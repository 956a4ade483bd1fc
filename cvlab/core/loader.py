"""The device loader: batches from uint8 image tensors kept on the device, shuffled, augmented and
normalized there (no worker processes, no per-image Python). core/data.py turns the CIFAR files into the
tensors this loader takes."""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from .data import NORMALIZATION, Split


def normalize_constants(name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = NORMALIZATION[name]
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean, device=device).view(shape), torch.tensor(std, device=device).view(shape))


class TensorLoader:
    """Batches from uint8 tensors kept on `device`: shuffle (with its own generator),
    augment the uint8 batch, then convert to float and normalize, all on the device.

    Yields (images float32 (B,3,32,32), targets int64 (B,)); with `mix` (Mixup/CutMix, applied
    to the normalized batch) the targets are soft, float (B, num_classes). The iteration order depends
    only on the generators, so a run resumed from a saved generator state repeats it exactly.

    Data parallelism: with `shard=(rank, world_size)` every process draws the same permutation and yields
    its 1/world_size of each global batch of `batch_size` images (contiguous within the batch), so the
    processes together see exactly the batches one process would. `equal_shards` (training) trims the last
    batch to a multiple of world_size images (dropping at most world_size - 1 per epoch) so every process
    takes equal, non-empty shares; otherwise (evaluation) shares differ by at most one and empty ones are
    skipped.

    Generators: `order` (CPU) shuffles, once per pass; `augment` (on the device) draws what the device
    needs (crop offsets, flips, partner orders for mixing); `host` (CPU; the augment generator itself on
    the CPU) gives the per-batch seeds of torchvision policies; `mix` (CPU) draws the mixing weights and
    boxes. No batch waits for the device to hand a random number to the host.

    Resume on any device: `augment` and `host` are re-seeded at the start of every pass from
    (seed, pass, rank), so their state is never saved: a device generator's state is device-specific (5,056
    bytes on the CPU, 16 on CUDA and NPU) and could not move between a laptop's CPU and a GPU server. The saved
    state (`state_dict`) holds only CPU generators and the pass count: a run resumed on the same device kind
    repeats its draws exactly; on another kind it continues with that device's stream from the same seeds.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, normalization: str,
                 shuffle: bool = False, augment: Callable[..., torch.Tensor] | None = None,
                 seed: int = 0, channels_last: bool = False, drop_last: bool = False,
                 mix: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                 shard: tuple[int, int] = (0, 1), equal_shards: bool = False) -> None:
        """`augment(x, device_generator, host_generator)` (see augment.compose) and
        `mix(x, y, cpu_generator, device_generator)` (see augment.build_mix) run per batch on the device."""
        self.images = split.images.to(device)
        self.labels = split.fine.to(device)
        self.batch_size, self.device, self.normalization = batch_size, device, normalization
        self.shuffle, self.augment, self.mix, self.drop_last = shuffle, augment, mix, drop_last
        self.channels_last = channels_last
        self.mean, self.std = normalize_constants(normalization, device)
        self.seed, self.shard, self.equal_shards = seed, shard, equal_shards
        self.epoch = 0  # passes started; sharded loaders derive their augmentation seed from it
        # CPU generator for the order (portable state), device generator for augmentation.
        self.order_generator = torch.Generator().manual_seed(seed)
        self.augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
        self.mix_generator = torch.Generator().manual_seed(seed + 2)  # CPU: mixing draws a few scalars per batch
        # Host-side draws of the augmentation (policy seeds): on the CPU the augment generator itself.
        self.host_generator = (self.augment_generator if torch.device(device).type == "cpu"
                               else torch.Generator().manual_seed(seed + 3))

    def like(self, split: Split) -> "TensorLoader":
        """A loader of `split` with this loader's settings (batch size, device, normalization, shuffling,
        augmentation, seed, memory format, last batch, mixing, shard), and fresh generators."""
        return TensorLoader(split, self.batch_size, self.device, self.normalization, self.shuffle, self.augment,
                            self.seed, self.channels_last, self.drop_last, self.mix, self.shard, self.equal_shards)

    def __len__(self) -> int:
        n = self.labels.shape[0]
        batches = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
        world = self.shard[1]
        if world > 1 and self.equal_shards and not self.drop_last and 0 < n % self.batch_size < world:
            batches -= 1  # the last batch has fewer images than processes
        return batches

    def _share(self, start: int, stop: int) -> tuple[int, int]:
        """This process's part [lo, hi) of the global batch [start, stop)."""
        rank, world = self.shard
        size = stop - start
        if self.equal_shards:
            size -= size % world
        per, extra = divmod(size, world)
        lo = start + rank * per + min(rank, extra)
        return lo, lo + per + (1 if rank < extra else 0)

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.num_images
        # Once per pass, not per batch: the order comes from a CPU generator (its state is portable across devices).
        order = torch.randperm(n, generator=self.order_generator).to(self.device) if self.shuffle else None
        self._seed_pass()
        self.epoch += 1
        for b in range(len(self)):
            start, stop = b * self.batch_size, min((b + 1) * self.batch_size, n)
            if self.shard[1] > 1:
                start, stop = self._share(start, stop)
                if start == stop:
                    continue
            sl = slice(start, stop)
            idx = order[sl] if order is not None else sl
            x, y = self.images[idx], self.labels[idx]
            if self.augment is not None:
                x = self.augment(x, self.augment_generator, self.host_generator)
            x = self.to_float(x)
            if self.mix is not None:
                x, y = self.mix(x, y, self.mix_generator, self.augment_generator)
            yield x, y

    def _seed_pass(self) -> None:
        """The augmentation generators for this pass, from (seed, pass, rank) alone: nothing device-specific
        has to survive a resume."""
        seeds = np.random.SeedSequence([self.seed, self.epoch, self.shard[0]]).generate_state(2)
        self.augment_generator.manual_seed(int(seeds[0]))
        if self.host_generator is not self.augment_generator:
            self.host_generator.manual_seed(int(seeds[1]))

    def to_float(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float().div_(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def state_dict(self) -> dict:
        """CPU generators and the pass count only: the same bytes on every device."""
        return {"order": self.order_generator.get_state(), "mix": self.mix_generator.get_state(),
                "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        """Restore the CPU generators and the pass count, from a checkpoint written on any device (mapped to
        any device or dtype: Generator.set_state takes only CPU byte tensors). The augmentation generators
        follow from the pass count; an `augment`/`host` state in an older checkpoint is device-specific and
        not used."""
        self.order_generator.set_state(_byte_state(state["order"]))
        self.mix_generator.set_state(_byte_state(state["mix"]))
        self.epoch = int(state.get("epoch", 0))


def _byte_state(state: torch.Tensor) -> torch.Tensor:
    """A generator state as Generator.set_state takes it: a CPU uint8 tensor."""
    return state.to("cpu", torch.uint8)
