"""The README's first command: `prompt-registry demo` builds a tiny model and round-trips prompts."""

from __future__ import annotations

import json

from click.testing import CliRunner

from prompt_registry_cli.main import main


def test_demo_runs_end_to_end(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--workdir", str(tmp_path), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["ok"] and out["doctor_ok"]
    v1, v2 = out["sets"]
    assert (v1["n_rows"], v2["n_rows"], v2["n_users"], v2["base_id"]) == (1000, 11, 1010, v1["id"])
    assert out["model"]["architecture"] == "LlamaForCausalLM" and out["model"]["hidden_size"] == 32
    assert (tmp_path / "registry" / "registry.db").exists()
