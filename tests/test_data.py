"""Data sets: canonical layout, errors with line numbers, split, MovieLens converters, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import prompt_registry as pr
from prompt_registry.cli.main import main
from prompt_registry.data import Dataset, convert_movielens, dataset_stats, make_synthetic, write_dataset
from prompt_registry.data.movielens import normalise_title


def _write(folder, interactions: str, items: str = "item_id,text\ni1,Alpha\ni2,Beta\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.csv").write_text(interactions)
    (folder / "items.csv").write_text(items)
    return folder


@pytest.mark.parametrize(
    ("interactions", "items", "match"),
    [
        ("user_id,item_id,label\nu1,i1,4\n", None, r"interactions.csv:1: missing column\(s\) timestamp"),
        ("user_id,item_id,label,timestamp\nu1,i1,4,1\nu1,i9,3,2\n", None, r"interactions.csv:3: unknown item 'i9'"),
        ("user_id,item_id,label,timestamp\nu1,i1,4,1\nu2,i2,great,2\n", None, r"interactions.csv:3: label 'great' is not a number"),
        ("user_id,item_id,label,timestamp\nu1,i1,4,1\n,i2,3,2\n", None, r"interactions.csv:3: empty user_id"),
        ("user_id,item_id,label,timestamp\nu1,i1,nan,1\n", None, r"interactions.csv:2: label 'nan' is not finite"),
        ("user_id,item_id,label,timestamp\nu1,i1,4,yesterday\n", None, r"interactions.csv:2: timestamp 'yesterday'"),
        ("user_id,item_id,label,timestamp\n", None, r"has no interactions"),
        ("user_id,item_id,label,timestamp\nu1,i1,4,1\n", "item_id,title\ni1,A\n", r"items.csv:1: missing column\(s\) text"),
        ("user_id,item_id,label,timestamp\nu1,i1,4,1\n", "item_id,text\ni1,A\ni1,B\n", r"items.csv:3: item 'i1' is listed twice"),
    ],
    ids=["missing-column", "unknown-item", "non-numeric-label", "empty-user", "nan-label", "bad-timestamp", "empty", "items-columns", "items-dupe"],
)
def test_bad_files_name_file_and_line(tmp_path, interactions, items, match):
    folder = _write(tmp_path / "d", interactions, items or "item_id,text\ni1,Alpha\ni2,Beta\n")
    with pytest.raises(pr.InvalidFileError, match=match):
        Dataset.load(folder)


def test_missing_folder(tmp_path):
    with pytest.raises(pr.InvalidFileError, match="does not exist"):
        Dataset.load(tmp_path / "nope")


def test_chronological_split_is_per_user_and_deterministic(tmp_path):
    rows = [(f"u{u}", f"i{(u + t) % 5}", float(1 + (t % 5)), 100 - t if u == 0 else t) for u in range(3) for t in range(10)]
    rows.append(("solo", "i1", 3.0, 5))  # one interaction: train only
    folder = write_dataset(tmp_path / "d", rows, {f"i{j}": f"item {j}" for j in range(5)})
    data = Dataset.load(folder)
    split = data.split(test_fraction=0.2, valid_fraction=0.25)
    again = data.split(test_fraction=0.2, valid_fraction=0.25)
    assert all(np.array_equal(getattr(split, p), getattr(again, p)) for p in ("train", "valid", "test"))
    for user in ("u0", "u1", "u2"):
        mine = lambda part: part[data.users[part] == user]  # noqa: E731
        train, valid, test = mine(split.train), mine(split.valid), mine(split.test)
        assert (len(train), len(valid), len(test)) == (6, 2, 2)
        # everything in test is newer than everything in valid, which is newer than train
        assert data.timestamps[train].max() <= data.timestamps[valid].min() <= data.timestamps[test].min()
    assert list(data.users[split.train]).count("solo") == 1 and "solo" not in data.users[split.test]
    assert set(split.train) | set(split.valid) | set(split.test) == set(range(len(data)))
    only = data.split(users=["u1"])
    assert set(data.users[only.train]) == {"u1"}
    with pytest.raises(pr.UnknownUserError, match="ghost"):
        data.split(users=["ghost"])


def test_kind_and_stats(tmp_path):
    ratings = Dataset.load(make_synthetic(tmp_path / "r", n_users=5, per_user=8))
    clicks = Dataset.load(make_synthetic(tmp_path / "c", n_users=5, per_user=8, kind="click"))
    assert (ratings.kind, clicks.kind) == ("rating", "click")
    stats = dataset_stats(tmp_path / "r")
    assert (stats["users"], stats["interactions"], stats["interactions_per_user"]["min"]) == (5, 40, 8)
    assert stats["fingerprint"] == ratings.fingerprint


def test_movielens_classic_and_recbole_give_the_same_data_set(tmp_path):
    classic = tmp_path / "ml-100k"
    classic.mkdir()
    (classic / "u.data").write_text("1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n")
    genres = "|0" * 19
    (classic / "u.item").write_bytes(
        f"10|Usual Suspects, The (1995)|01-Jan-1995||http://x{genres}\n20|Am\xe9lie (2001)|01-Jan-2001||http://y{genres}\n".encode("latin-1"))
    recbole = tmp_path / "recbole"
    recbole.mkdir()
    (recbole / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t10\t4\t881250949\n1\t20\t3\t881250950\n2\t10\t5\t881250951\n")
    (recbole / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n10\tUsual Suspects, The\t1995\tCrime\n20\tAm\u00e9lie\t2001\tComedy\n")
    a = Dataset.load(convert_movielens(classic, tmp_path / "a"))
    b = Dataset.load(convert_movielens(recbole, tmp_path / "b"))
    assert a.item_text == b.item_text == {"10": "The Usual Suspects", "20": "Am\u00e9lie"}
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.users, b.users)
    with pytest.raises(pr.InvalidFileError, match="neither"):
        convert_movielens(tmp_path / "a", tmp_path / "c")
    (classic / "u.data").write_text("1\t10\t4\n")
    with pytest.raises(pr.InvalidFileError, match=r"u.data:1: expected user item rating timestamp"):
        convert_movielens(classic, tmp_path / "d")


def test_title_normalisation():
    assert normalise_title("Usual Suspects, The (1995)") == "The Usual Suspects"
    assert normalise_title("Toy Story (1995)") == "Toy Story"
    assert normalise_title("unkonwn") == "unkonwn"


def test_data_cli(tmp_path):
    make_synthetic(tmp_path / "syn", n_users=4, per_user=5)
    runner = CliRunner()
    out = runner.invoke(main, ["data", "stats", str(tmp_path / "syn"), "--json"])
    assert out.exit_code == 0 and json.loads(out.stdout)["users"] == 4
    assert "interactions" in runner.invoke(main, ["data", "stats", str(tmp_path / "syn")]).stdout
    bad = _write(tmp_path / "bad", "user_id,item_id,label,timestamp\nu1,zz,4,1\n")
    res = runner.invoke(main, ["data", "stats", str(bad)])
    assert res.exit_code == 1 and "interactions.csv:2: unknown item 'zz'" in res.stderr


def test_subsample_keeps_most_recent_rows_of_drawn_users(tmp_path):
    from prompt_registry.data import subsample

    make_synthetic(tmp_path / "full", n_users=10, per_user=12)
    out = subsample(tmp_path / "full", tmp_path / "small", n_users=4, per_user=5, seed=1, min_interactions=12)
    small, full = Dataset.load(out), Dataset.load(tmp_path / "full")
    assert len(set(small.users.tolist())) == 4 and len(small) == 20
    for user in set(small.users.tolist()):
        newest = np.sort(full.timestamps[full.users == user])[-5:]
        assert np.array_equal(np.sort(small.timestamps[small.users == user]), newest)
    again = Dataset.load(subsample(tmp_path / "full", tmp_path / "again", n_users=4, per_user=5, seed=1))
    assert again.fingerprint == small.fingerprint
    with pytest.raises(pr.InvalidFileError, match="only 10 users"):
        subsample(tmp_path / "full", tmp_path / "x", n_users=11)
    res = CliRunner().invoke(main, ["data", "subsample", str(tmp_path / "full"), str(tmp_path / "cli"), "--users", "3", "--per-user", "4"])
    assert res.exit_code == 0 and len(Dataset.load(tmp_path / "cli")) == 12
