"""Token bucket arithmetic of the rate limiter."""

from __future__ import annotations

from fitconnect_kit.server.middleware import TokenBucketLimiter


def test_bucket_spends_and_refills() -> None:
    limiter = TokenBucketLimiter(max_keys=100)
    decisions = [limiter.take("k", rate=1.0, capacity=3, now=0.0) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0]
    assert decisions[-1].retry_after == 1
    assert decisions[-1].reset == 3
    later = limiter.take("k", rate=1.0, capacity=3, now=1.5)
    assert later.allowed
    assert later.remaining == 0
    assert limiter.take("other", rate=1.0, capacity=3, now=1.5).remaining == 2


def test_full_buckets_are_evicted() -> None:
    limiter = TokenBucketLimiter(max_keys=100)
    for index in range(100):
        limiter.take(f"k{index}", rate=10.0, capacity=2, now=0.0)
    limiter.take("new", rate=10.0, capacity=2, now=100.0)
    assert len(limiter._buckets) == 1
