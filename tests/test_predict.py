"""``PromptReader.predict`` and the ``predict`` CLI: predictions from served prompts equal what
evaluation computes through the training injection code, are personal, come from the pinned
version (its own head), follow the missing-user policy, and read the training rows a head needs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.cli.main import main
from prompt_registry.data.dataset import Dataset
from prompt_registry.data.synthetic import make_synthetic
from prompt_registry.serving import ReaderConfig
from prompt_registry.testing.models import build_tiny_llama
from prompt_registry.training import metrics
from prompt_registry.training.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
STATIC = ReaderConfig(check_every_seconds=None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Llama with two rating versions (v2 aliased production later) and one click version."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("predict")
    llama = build_tiny_llama(root / "tiny-llama", hidden_size=32)
    rating = make_synthetic(root / "rating", n_users=40, n_items=60, per_user=25, seed=0)
    click = make_synthetic(root / "click", n_users=40, n_items=60, per_user=25, seed=1, kind="click")
    reg = Registry.init(root / "reg", actor="server")
    reg.register_model("llama", llama)
    first = reg.train_prompts("llama", "rate", rating, config=TrainConfig(epochs=6, lr=1e-2, seed=0), progress=False, evaluate_split="test",
                              alias="production")
    second = reg.train_prompts("llama", "rate", rating, config=TrainConfig(epochs=2, lr=1e-2, seed=1), progress=False, evaluate_split="test")
    clicks = reg.train_prompts("llama", "click", click, config=TrainConfig(epochs=3, lr=1e-2), progress=False, evaluate_split="test",
                               alias="production")
    yield {"reg": reg, "root": root, "rating": rating, "click": click, "first": first, "second": second, "clicks": clicks}
    reg.close()
    torch.set_num_threads(previous)


def _test_pairs(data_dir, result):
    data = Dataset.load(data_dir)
    run = result.run.config
    test = data.split(test_fraction=run["test_fraction"], valid_fraction=run["valid_fraction"]).test
    return data, data.users[test].tolist(), data.items[test].tolist(), data.labels[test]


def test_predictions_equal_what_evaluation_computed(trained):
    reg, first = trained["reg"], trained["first"]
    data, users, items, labels = _test_pairs(trained["rating"], first)
    reader = reg.reader("llama", "rate", config=STATIC)
    predicted = reader.predict(users, items, data=data, batch_size=17)  # another batching than evaluation's
    assert predicted.shape == (len(users),) and predicted.dtype == np.float32 and ((predicted >= 1) & (predicted <= 5)).all()
    got = metrics.summarize(np.asarray(users), predicted, labels, "rating")
    assert got["rmse"] == pytest.approx(first.evaluation.metrics["rmse"], abs=1e-5)
    per_user = metrics.per_user(np.asarray(users), predicted, labels, "rating")
    for user, m in reg.get_evaluation(first.evaluation.id).per_user.items():
        assert per_user[user]["rmse"] == pytest.approx(m["rmse"], abs=1e-5)
    # personal (each user's own rmse matched above): one item, every user, not one value; request order kept
    everyone = sorted(set(users))
    spread = reader.predict(everyone, [items[0]] * len(everyone), data=data)
    assert np.std(spread) > 0.01
    np.testing.assert_allclose(reader.predict(everyone[::-1], [items[0]] * len(everyone), data=data), spread[::-1], atol=1e-5)
    # without the data set the item string is the text: the texts themselves give the same predictions
    np.testing.assert_allclose(reader.predict(users[:30], [data.item_text[i] for i in items[:30]]), predicted[:30], atol=1e-5)
    assert reader.predict([], []).shape == (0,)


def test_predictions_come_from_the_pinned_version_and_its_own_head(trained):
    reg, first, second = trained["reg"], trained["first"], trained["second"]
    data, users, items, labels = _test_pairs(trained["rating"], first)
    reader = reg.reader("llama", "rate", config=STATIC)
    before = reader.predict(users, items, data=data)
    reg.set_alias("production", second.set.id)
    try:
        np.testing.assert_array_equal(reader.predict(users, items, data=data), before)  # pinned until refresh
        assert reader.refresh() and reader.set.id == second.set.id
        after = reader.predict(users, items, data=data)
        assert metrics.rmse(after, labels) == pytest.approx(second.evaluation.metrics["rmse"], abs=1e-5)
        assert not np.allclose(after, before)
    finally:
        reg.set_alias("production", first.set.id)
    pinned = reg.reader("llama", "rate", alias=None, version=first.set.version, config=STATIC)
    np.testing.assert_allclose(pinned.predict(users, items, data=data), before, atol=1e-6)


def test_missing_users_and_bad_requests(trained):
    reg, first = trained["reg"], trained["first"]
    data, users, items, _ = _test_pairs(trained["rating"], first)
    reader = reg.reader("llama", "rate", config=STATIC)
    with pytest.raises(pr.UnknownUserError, match="no prompt for 1 user"):
        reader.predict([users[0], "stranger"], [items[0], items[0]], data=data)
    zeros = reg.reader("llama", "rate", config=ReaderConfig(missing="zeros", check_every_seconds=None))
    out = zeros.predict([users[0], "stranger"], [items[0], items[0]], data=data)
    assert out[0] == pytest.approx(reader.predict([users[0]], [items[0]], data=data)[0], abs=1e-6) and 1 <= out[1] <= 5
    with pytest.raises(pr.InvalidArgumentError, match="one item per user"):
        reader.predict(users[:2], items[:1])
    with pytest.raises(pr.InvalidArgumentError, match="not in data set"):
        reader.predict(users[:1], ["no-such-item"], data=data)


def test_a_head_that_reads_training_rows_needs_the_data(trained):
    reg, clicks = trained["reg"], trained["clicks"]
    data, users, items, labels = _test_pairs(trained["click"], clicks)
    reader = reg.reader("llama", "click", config=STATIC)
    with pytest.raises(pr.InvalidArgumentError, match="item prior"):
        reader.predict(users[:3], items[:3])
    predicted = reader.predict(users, items, data=trained["click"])  # a folder is loaded as the data set
    assert ((predicted > 0) & (predicted < 1)).all()
    assert metrics.auc(predicted, labels) == pytest.approx(clicks.evaluation.metrics["auc"], abs=1e-6)


def test_predict_cli_writes_a_csv_of_predictions(trained, tmp_path):
    reg, first = trained["reg"], trained["first"]
    data, users, items, _ = _test_pairs(trained["rating"], first)
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "note"])
        writer.writerows((u, i, "x") for u, i in zip(users[:25], items[:25]))
    out = tmp_path / "predictions.csv"
    location = str(trained["root"] / "reg")
    result = CliRunner().invoke(main, ["--registry", location, "predict", str(pairs), str(out), "--model", "llama", "--task", "rate",
                                       "--data", str(trained["rating"]), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert (summary["rows"], summary["users"], summary["set_id"]) == (25, len(set(users[:25])), first.set.id)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["user_id"], r["item_id"]) for r in rows] == list(zip(users[:25], items[:25]))
    expected = reg.reader("llama", "rate", config=STATIC).predict(users[:25], items[:25], data=data)
    np.testing.assert_allclose([float(r["prediction"]) for r in rows], expected, rtol=1e-5)
    # a version instead of the alias, and a table
    again = CliRunner().invoke(main, ["--registry", location, "predict", str(pairs), str(out), "--model", "llama", "--task", "rate",
                                      "--version", str(trained["second"].set.version), "--data", str(trained["rating"])])
    assert again.exit_code == 0 and f"set {trained['second'].set.id}" in again.output, again.output
    # refusals: a header without item_id, both --alias and --version; nothing is written
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id\nu1\n")
    out.unlink()
    refused = CliRunner().invoke(main, ["--registry", location, "predict", str(bad), str(out), "--model", "llama", "--task", "rate"])
    assert refused.exit_code == 1 and "no `item_id` column" in refused.output and not out.exists()
    both = CliRunner().invoke(main, ["--registry", location, "predict", str(pairs), str(out), "--model", "llama", "--task", "rate",
                                     "--alias", "production", "--version", "1"])
    assert both.exit_code == 2 and not out.exists()
