from p3bench.callbacks import estimate_steps


def test_estimate_counts_partial_batches_and_adds_one_step():
    # 100 examples of 10 tokens, batches of 32: 4 batches (32, 32, 32, 4) and 1,000 tokens an epoch
    # plus a margin of 2% (rounded up) and one step
    assert estimate_steps([10] * 100, target_tokens=2500, batch_size=32) == 10 + 1 + 1
    assert estimate_steps([10] * 100, target_tokens=1000, batch_size=32) == 4 + 1 + 1
    assert estimate_steps([10] * 100, target_tokens=2500, batch_size=32, accumulate=2) == 5 + 1 + 1


def test_estimate_covers_length_grouped_runs():
    """Simulate the real sampler: the step estimate reaches the token target for many seeds."""
    import torch

    from p3bench.models.sampler import LengthGroupedBatchSampler

    lengths = [5 + (i * 7919) % 60 for i in range(1000)]
    for seed in range(10):
        for target in (3_000, 40_000, 95_000):
            steps = estimate_steps(lengths, target, batch_size=16)
            sampler = LengthGroupedBatchSampler(lengths, 16, torch.Generator().manual_seed(seed), 50)
            tokens, done = 0, 0
            while tokens < target:
                for batch in sampler:
                    tokens += sum(lengths[i] for i in batch)
                    done += 1
                    if tokens >= target:
                        break
            assert done <= steps, (seed, target, done, steps)
