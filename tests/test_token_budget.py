from p3bench.callbacks import estimate_steps


def test_estimate_counts_partial_batches_and_adds_one_step():
    # 100 examples of 10 tokens, batches of 32: 4 batches (32, 32, 32, 4) and 1,000 tokens an epoch
    assert estimate_steps([10] * 100, target_tokens=2500, batch_size=32) == 2 * 4 + 2 + 1
    assert estimate_steps([10] * 100, target_tokens=1000, batch_size=32) == 4 + 1
    assert estimate_steps([10] * 100, target_tokens=2500, batch_size=32, accumulate=2) == 5 + 1


def test_estimate_never_undershoots_a_simulated_run():
    lengths = [5 + (i * 7) % 40 for i in range(97)]
    for target in (1, 500, 2_000, 10_000):
        steps = estimate_steps(lengths, target, batch_size=8)
        tokens, done = 0, 0
        while tokens < target:  # sequential passes, batches of 8 with a partial last one
            for start in range(0, len(lengths), 8):
                tokens += sum(lengths[start : start + 8])
                done += 1
                if tokens >= target:
                    break
        assert done <= steps
