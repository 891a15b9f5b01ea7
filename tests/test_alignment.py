"""PUMA's ``init="tokens"``: a linear-family Phi starts at the ridge map between the models'
embeddings of the tokens their vocabularies share (``migration.alignment``)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import prompt_registry as pr
from prompt_registry.migration import alignment
from prompt_registry.migration.alignment import TokenTable, canonical, canonical_vocab, fit_ridge, token_map
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.puma import PumaConfig, PumaMethod
from prompt_registry.migration.puma.adapter import AdapterConfig, Phi
from prompt_registry.migration.puma.selection import SelectionConfig
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama


def test_token_strings_meet_in_one_canonical_form_across_schemes():
    # a word start and a continuation piece, as each scheme writes them
    assert canonical("play", "wordpiece") == canonical("Ġplay", "bytelevel") == canonical("▁play", "sentencepiece") == "▁play"
    assert canonical("##ing", "wordpiece") == canonical("ing", "bytelevel") == canonical("ing", "sentencepiece") == "ing"
    assert canonical("play", "words") == "▁play"
    assert alignment._scheme(["the", "##s", "##ing", "play"]) == "wordpiece"
    assert alignment._scheme(["Ġthe", "s", "Ġplay", "ing"]) == "bytelevel"
    assert alignment._scheme(["▁the", "s", "▁play"]) == "sentencepiece"
    assert alignment._scheme(["the", "play", "movie"]) == "words"


def test_ridge_recovers_a_planted_map_and_shrinks_to_the_mean_on_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12))
    a, b = rng.normal(size=(12, 20)), rng.normal(size=20)
    w, bias, summary = fit_ridge(x, x @ a + b + 0.01 * rng.normal(size=(600, 20)))
    np.testing.assert_allclose(w, a, atol=0.01)
    np.testing.assert_allclose(bias, b, atol=0.01)
    assert summary["explained"] > 0.999 and summary["lambda"] <= 1e-2
    _, _, noise = fit_ridge(x, rng.normal(size=(600, 20)))  # no relation: the held-out tokens pick the strongest shrinkage
    assert noise["lambda"] >= 10 and noise["explained"] < 0.02
    with pytest.raises(pr.InvalidArgumentError, match="at least"):
        fit_ridge(x[:10], x[:10])


def _tables(shared: int, extra: int, seed: int) -> tuple[TokenTable, TokenTable, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(shared)]
    src_vocab = {f"▁{w}": i for i, w in enumerate(words + [f"s{i}" for i in range(extra)])}
    tgt_vocab = {f"▁{w}": i for i, w in enumerate([f"t{i}" for i in range(extra)] + words)}  # other ids, other extras
    src = rng.normal(size=(len(src_vocab), 8))
    a, b = rng.normal(size=(8, 6)), rng.normal(size=6)
    tgt = rng.normal(size=(len(tgt_vocab), 6))
    for w in words:
        tgt[tgt_vocab[f"▁{w}"]] = src[src_vocab[f"▁{w}"]] @ a + b
    return (TokenTable(src_vocab, torch.tensor(src, dtype=torch.float32)), TokenTable(tgt_vocab, torch.tensor(tgt, dtype=torch.float32)), a, b)


@pytest.mark.parametrize("kind", ["linear", "lowrank", "linear+mlp"])
def test_phi_starts_at_the_token_map(kind):
    source, target, a, b = _tables(shared=200, extra=50, seed=1)
    fitted = token_map([source], target)
    assert fitted.summary["shared_tokens"] == 200 and fitted.summary["explained"] > 0.999
    phi = Phi(AdapterConfig((8,), 6, kind=kind, rank=6, dropout=0.0)).eval()
    phi.init_from_map(fitted.weight, fitted.bias)
    x = torch.randn(5, 1, 8)
    expected = x @ torch.tensor(a, dtype=torch.float32) + torch.tensor(b, dtype=torch.float32)
    torch.testing.assert_close(phi(x), expected, atol=1e-3, rtol=1e-3)  # rank 6 holds the whole 8 -> 6 map
    low = Phi(AdapterConfig((8,), 6, kind="lowrank", rank=2, dropout=0.0)).eval()
    low.init_from_map(fitted.weight, fitted.bias)
    u, s, vh = torch.linalg.svd(fitted.weight.double())
    best = (u[:, :2] * s[:2]) @ vh[:2]  # the best rank-2 approximation
    torch.testing.assert_close(low.up.weight.double() @ low.down.weight.double(), best, atol=1e-5, rtol=1e-5)


def test_aggregated_sources_concatenate_and_bad_starts_are_refused():
    s1, target, _, _ = _tables(shared=100, extra=10, seed=2)
    s2 = TokenTable({k: v for k, v in s1.vocab.items()}, torch.randn(len(s1.vocab), 4))
    fitted = token_map([s1, s2], target)
    assert tuple(fitted.weight.shape) == (6, 12)  # inputs concatenated, as an aggregated Phi reads them
    with pytest.raises(pr.InvalidArgumentError, match="share 0 token"):
        token_map([TokenTable({"▁x": 0}, torch.zeros(1, 8))], target)
    with pytest.raises(pr.InvalidArgumentError, match="mlp"):
        Phi(AdapterConfig((8,), 6, kind="mlp")).init_from_map(fitted.weight[:, :8], fitted.bias)
    with pytest.raises(pr.InvalidArgumentError, match="cannot start"):
        Phi(AdapterConfig((8,), 6, kind="linear")).init_from_map(fitted.weight, fitted.bias)
    with pytest.raises(pr.InvalidArgumentError, match="init='tokens'"):
        PumaConfig(phi="mlp", init="tokens")
    with pytest.raises(pr.InvalidArgumentError, match="init must be"):
        PumaConfig(init="svd")


def _planted_pair(tmp_path):
    """A tiny BERT (16) and a tiny Llama (24) whose shared words' embeddings are an affine image of
    the BERT's: the map init='tokens' must find."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    bert = build_tiny_bert(tmp_path / "bert", hidden_size=16, seed=1)
    llama = build_tiny_llama(tmp_path / "llama", hidden_size=24, seed=2)

    src_tok, tgt_tok = AutoTokenizer.from_pretrained(bert), AutoTokenizer.from_pretrained(llama)
    src_emb = AutoModel.from_pretrained(bert).get_input_embeddings().weight.detach()
    model = AutoModelForCausalLM.from_pretrained(llama)
    torch.manual_seed(3)
    a, b = torch.randn(16, 24) * 0.1, torch.randn(24) * 0.01
    src_vocab, tgt_vocab = canonical_vocab(src_tok), canonical_vocab(tgt_tok)
    shared = sorted(set(src_vocab) & set(tgt_vocab))
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for word in shared:
            emb[tgt_vocab[word]] = src_emb[src_vocab[word]] @ a + b
    model.save_pretrained(llama)
    return bert, llama, len(shared), (a, b), src_emb, src_vocab, shared


def test_a_migration_starts_its_map_from_the_shared_tokens_and_records_it(tmp_path):
    from prompt_registry.backbones.loader import load_backbone
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.training.config import TrainConfig

    bert, llama, n_shared, (a, b), src_emb, src_vocab, shared = _planted_pair(tmp_path)
    assert n_shared >= 40  # the tiny models share their word vocabulary (49 words)
    data = make_synthetic(tmp_path / "data", n_users=30, n_items=20, per_user=12, seed=4)
    with pr.Registry.init(tmp_path / "reg") as reg:
        reg.register_model("bert", bert)
        reg.register_model("llama", llama)
        reg.train_prompts("bert", "rate", data, config=TrainConfig(epochs=1), progress=False)
        # the start itself: through the method, with the tables migrate offers
        from prompt_registry.migration.migrate import _token_tables

        source_set = reg.list_sets(model="bert")[0]
        target = load_backbone(reg.get_model("llama"), device="cpu")
        method = PumaMethod(PumaConfig(phi="linear", init="tokens"), Phi(AdapterConfig((16,), 24, kind="linear", dropout=0.0)))
        ctx = types.SimpleNamespace(token_tables=lambda: _token_tables(reg._s, [source_set], target), seed=0, init={})
        method._init_from_tokens(ctx)
        assert ctx.init["kind"] == "tokens" and ctx.init["shared_tokens"] == n_shared and ctx.init["explained"] > 0.999
        probe = src_emb[[src_vocab[w] for w in shared[:5]]].reshape(5, 1, 16)
        torch.testing.assert_close(method.map(probe), (probe @ a + b), atol=1e-3, rtol=1e-3)  # a source token lands on the target's
        # and a whole migration with it: the ledger says how the map started
        config = MigrationConfig(method_config={"phi": "linear", "init": "tokens", "lr": 3e-3}, min_steps=40, head_lr=1e-2,
                                 selection=SelectionConfig(budget=10))
        result = reg.migrate(["bert"], "llama", "rate", data, config=config, evaluate=False, progress=False)
        init = result.run.cost["phi_init"]
        assert init["shared_tokens"] == n_shared and init["explained"] > 0.999 and init["lambda"] <= 1e-2
        assert result.set.n_users == 30
        assert reg.load_artifact(result.adapter.id)[0].config["method_config"]["init"] == "tokens"


def test_cli_takes_the_init_and_refuses_it_for_the_mlp(tmp_path):
    from click.testing import CliRunner

    from prompt_registry.cli.main import main

    base = ["--registry", str(tmp_path / "reg"), "migrate", "run", "--from", "a", "--to", "b", "--task", "t", "--data", str(tmp_path)]
    result = CliRunner().invoke(main, [*base, "--phi", "mlp", "--phi-init", "tokens"])
    assert result.exit_code != 0 and "init='tokens'" in result.output, result.output
    assert not (tmp_path / "reg").exists()  # refused before anything was opened or written
