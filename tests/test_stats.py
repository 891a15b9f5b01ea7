"""The statistics the quality reports rest on: pooled RMSE, the paired bootstrap over users, and its
seed-joint form (``paired_bootstrap_seeds``) that ``bench paper`` judges the paper's claims with."""

from __future__ import annotations

import numpy as np
import pytest

from prompt_registry.training.stats import paired_bootstrap, paired_bootstrap_seeds, pooled, recovered


def _per_user(errors: np.ndarray) -> dict[str, dict[str, float]]:
    """Per-user metrics from a (users, ratings) matrix of errors."""
    return {f"u{i:03d}": {"rmse": float(np.sqrt(np.mean(row**2))), "n": len(row)} for i, row in enumerate(errors)}


def test_pooled_rmse_weights_users_by_their_ratings():
    per_user = {"a": {"rmse": 1.0, "n": 1}, "b": {"rmse": 2.0, "n": 3}}
    assert pooled(per_user, ["a", "b"], "rating") == pytest.approx(np.sqrt((1 + 12) / 4))


def test_a_real_difference_is_resolved_and_noise_is_not():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(300, 8))
    better = _per_user(base * 0.8)
    same = _per_user(base + rng.normal(scale=0.05, size=base.shape))
    reference = _per_user(base)
    gain = paired_bootstrap(better, reference, "rating")
    assert gain["diff"] < 0 and abs(gain["diff"]) > 5 * gain["se"] and gain["hi"] < 0
    noise = paired_bootstrap(same, reference, "rating")
    assert abs(noise["diff"]) < 3 * noise["se"] + 0.01


def test_seed_joint_bootstrap_matches_the_single_seed_one_and_averages_seeds():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(200, 6))
    a, b = _per_user(base * 0.9), _per_user(base)
    one = paired_bootstrap_seeds([a], [b], "rating", seed=3)
    assert one["se"] == pytest.approx(paired_bootstrap(a, b, "rating", seed=3)["se"])  # same users resampled
    a2 = _per_user(base * 0.7)
    two = paired_bootstrap_seeds([a, a2], [b, b], "rating")
    assert two["diff"] == pytest.approx((pooled(a, list(a), "rating") + pooled(a2, list(a2), "rating")) / 2 - pooled(b, list(b), "rating"))
    assert two["seeds"] == 2 and two["users"] == 200
    # identical seeds: the joint bootstrap of two copies is exactly that of one (fully correlated, no sqrt(2) shrink)
    assert paired_bootstrap_seeds([a, a], [b, b], "rating", seed=3)["se"] == pytest.approx(one["se"])
    with pytest.raises(ValueError):
        paired_bootstrap_seeds([a], [b, b], "rating")


def test_recovered_share():
    assert recovered(1.2, 1.1, 1.0) == pytest.approx(0.5)
    assert recovered(1.0, 0.9, 1.0) is None
