"""How one P-RGE step's work splits over the run's workers (docs/distributed.md).

Torch-free: the trainer splits the step with it, the memory estimate sizes each worker with it,
and the configuration check refuses a split that cannot exist.

With at least as many directions as workers, worker r evaluates its contiguous block of the q
directions over the whole batch. With fewer, the workers form q contiguous groups, one per
direction, and the workers of a group split the batch's rows in blocks: each evaluates its
direction's copies on its rows, and the group's parts of the batch's mean loss add up to it.
So every worker has at least one direction and one row while workers ≤ q · batch_size.
"""

from __future__ import annotations


def block(count: int, worker: int, size: int) -> range:
    """Worker `worker`'s contiguous share of `count` items (directions, evaluation batches)."""
    return range(worker * count // size, (worker + 1) * count // size)


def directions(q: int, worker: int, size: int) -> range:
    """The step's directions worker `worker` of `size` evaluates."""
    if q >= size:
        return block(q, worker, size)
    direction = next(i for i in range(q) if worker in block(size, i, q))
    return range(direction, direction + 1)


def rows(q: int, batch_rows: int, worker: int, size: int) -> range:
    """The rows of the step's batch worker `worker` of `size` evaluates its directions on: all
    of them, unless the workers outnumber the directions; then its block of its group's."""
    if q >= size:
        return range(batch_rows)
    mine = group(q, directions(q, worker, size)[0], size)
    return block(batch_rows, worker - mine.start, len(mine))


def splits_rows(q: int, size: int) -> bool:
    """True when the workers of one direction split the batch's rows (fewer directions than
    workers): their losses are parts of the batch's mean, summed within each group."""
    return q < size


def group(q: int, direction: int, size: int) -> range:
    """The workers that evaluate `direction` when they split the rows (splits_rows)."""
    return block(size, direction, q)
