"""Synthetic recommendation data with real structure, for tests and the demo.

Each item has a few genre words (its text) and a latent vector tied to those genres; each user
has a bias and a taste vector over genres. Ratings are ``3 + bias + taste . genres + noise``,
clipped to 1..5; clicks are ratings >= 4. So a model that can read a user's prompt (bias, taste)
and the item's words can beat both the global mean and, with a capable backbone, the per-user mean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dataset import write_dataset

GENRES = ("action", "comedy", "drama", "horror", "romance", "space", "crime", "music")
NOUNS = ("story", "night", "city", "river", "dream", "war", "love", "game", "road", "house")


def synthetic_vocabulary() -> list[str]:
    """Every word the synthetic item texts use (tiny test tokenizers need them)."""
    return [*GENRES, *NOUNS, "movie"]


def make_synthetic(folder: str | Path, *, n_users: int = 60, n_items: int = 80, per_user: int = 30,
                   kind: str = "rating", seed: int = 0, noise: float = 0.3) -> Path:
    rng = np.random.default_rng(seed)
    genre_of = [rng.choice(len(GENRES), size=2, replace=False) for _ in range(n_items)]
    items = {
        f"i{j}": f"{GENRES[g[0]]} {GENRES[g[1]]} {NOUNS[rng.integers(len(NOUNS))]} movie"
        for j, g in enumerate(genre_of)
    }
    item_vec = np.zeros((n_items, len(GENRES)))
    for j, g in enumerate(genre_of):
        item_vec[j, g] = 1.0
    bias = rng.normal(0, 0.9, size=n_users)
    taste = rng.normal(0, 0.6, size=(n_users, len(GENRES)))
    rows = []
    for u in range(n_users):
        seen = rng.choice(n_items, size=min(per_user, n_items), replace=False)
        for t, j in enumerate(seen):
            score = 3 + bias[u] + taste[u] @ item_vec[j] + rng.normal(0, noise)
            rating = float(np.clip(np.round(score), 1, 5))
            label = rating if kind == "rating" else float(rating >= 4)
            rows.append((f"user{u:04d}", f"i{j}", label, 1_000_000 + 1000 * u + t))
    return write_dataset(folder, rows, items)
