"""Deterministic data order: global batches as a pure function of (seed, iteration).

The sample stream is the concatenation of per-epoch permutations, each drawn from a generator
seeded with derive_seed(seed, "order", epoch); global batch t is stream[t*B:(t+1)*B]. Under DDP
rank r takes the r-th contiguous chunk of B / world samples, so any number of processes sees the
same global batch, and a run resumed at iteration t continues with batch t. Every sample also gets
its own augmentation seed derive_seed(seed, "augment", t, position); datasets receive
``(index, sample_seed)`` pairs and draw flips/crops from ``random.Random(sample_seed)``.
"""
import numpy as np

from sgan.utils.seeding import derive_seed


class BatchOrder:
    """Global batch order over ``num_samples`` samples, ``batch_size`` per iteration."""

    def __init__(self, num_samples, batch_size, seed, shuffle=True):
        if num_samples <= 0:
            raise ValueError(f"num_samples: expected a positive number of training samples, got {num_samples}")
        if batch_size <= 0:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size}")
        self.num_samples, self.batch_size, self.seed, self.shuffle = num_samples, batch_size, seed, shuffle
        self._cache = {}

    def epoch_permutation(self, epoch):
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            if self.shuffle:
                rng = np.random.Generator(np.random.PCG64(derive_seed(self.seed, "order", epoch)))
                self._cache[epoch] = rng.permutation(self.num_samples)
            else:
                self._cache[epoch] = np.arange(self.num_samples)
        return self._cache[epoch]

    def global_batch(self, iteration):
        """[(dataset index, augmentation seed)] * batch_size for ``iteration``."""
        start = iteration * self.batch_size
        batch = []
        for position in range(self.batch_size):
            epoch, offset = divmod(start + position, self.num_samples)
            index = int(self.epoch_permutation(epoch)[offset])
            batch.append((index, derive_seed(self.seed, "augment", iteration, position)))
        return batch

    def rank_batch(self, iteration, rank=0, world=1):
        if self.batch_size % world:
            raise ValueError(f"batch_size: {self.batch_size} is not divisible by the number of processes {world}")
        share = self.batch_size // world
        return self.global_batch(iteration)[rank * share:(rank + 1) * share]


class IterationBatchSampler:
    """batch_sampler for torch DataLoader: this rank's part of batches start..stop-1."""

    def __init__(self, order, start, stop, rank=0, world=1):
        self.order, self.start, self.stop, self.rank, self.world = order, start, stop, rank, world

    def __iter__(self):
        for iteration in range(self.start, self.stop):
            yield self.order.rank_batch(iteration, self.rank, self.world)

    def __len__(self):
        return max(0, self.stop - self.start)
