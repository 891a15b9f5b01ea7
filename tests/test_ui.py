"""The read-only web UI (issue 19): the JSON API over HTTP, the token gate, no write route, and every
page in a real headless Chromium over a registry the demo builds with its tiny models.

The browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them
when missing); without them they are skipped, loudly. ``PROMPT_REGISTRY_UI_SHOTS=DIR`` saves the
screenshots there too (``docs/ui`` holds the committed ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from starlette.testclient import TestClient

from prompt_registry import Registry
from prompt_registry.cli.main import main
from prompt_registry.demo import run_demo
from prompt_registry.ui import create_app

CHROMIUM, DRIVER = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
TOKEN = "t0ken-for-the-tests-" + "x" * 8
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo's registry (tour, source prompts, random-init, retrain, a migration, a two-hop
    plan), plus more moves of one alias and a purged user."""
    previous = torch.get_num_threads()
    root = tmp_path_factory.mktemp("ui-demo")
    story = run_demo(root, echo=None, n_users=40, per_user=10, train_epochs=2, adapter_epochs=2, threads=1)
    torch.set_num_threads(previous)
    reg = Registry.open(root / "registry", actor="ui-test")
    tour = [s for s in reg.list_sets(task="tour")]
    model = tour[0].model
    for s in sorted(tour, key=lambda s: s.version)[:2]:
        reg.set_alias("staging", s.id, reason=f"try v{s.version}")
    reg.set_alias("staging", min(tour, key=lambda s: s.version).id, reason="roll back")
    purged = reg.list_users(limit=1)[0].external_id
    reg.purge_user(purged, reason="erasure request")
    yield {"reg": reg, "root": root, "model": model, "purged": purged, "story": story}
    reg.close()


@pytest.fixture(scope="module")
def client(demo):
    return TestClient(create_app(demo["reg"]))


def test_the_api_mirrors_the_library(demo, client):
    reg = demo["reg"]
    overview = client.get("/api/overview").json()
    assert {m["name"] for m in overview["models"]} == {m.name for m in reg.list_models()}
    assert overview["counts"]["users"] == reg.count_users() and overview["counts"]["sets"] == len(reg.list_sets())
    assert client.get("/api/models").json() == [m.to_dict() for m in reg.list_models()]  # what `model list --json` prints
    first = client.get("/api/sets?limit=2").json()
    assert first["total"] == len(reg.list_sets()) and len(first["items"]) == 2
    assert client.get("/api/sets?limit=2&offset=2").json()["items"][0]["id"] == reg.list_sets()[2].id
    tour = client.get(f"/api/sets?model={demo['model']}&task=tour").json()["items"]
    assert tour and all(s["task"] == "tour" for s in tour)
    assert [s["id"] for s in client.get("/api/sets?alias=staging").json()["items"]] == [s.id for s in reg.list_sets(alias="staging")]
    s = reg.list_sets(task="rating")[0]
    detail = client.get(f"/api/sets/{s.model}/{s.task}@v{s.version}").json()
    assert detail["set"]["id"] == s.id and detail["lineage_up"] == reg.lineage(s.id).to_dict()
    history = client.get(f"/api/aliases/staging/history?model={demo['model']}&task=tour").json()
    assert [m["new_set_id"] for m in history["moves"]] == [m.new_set_id for m in reg.alias_timeline("staging", model=demo["model"], task="tour")]
    audit = client.get(f"/api/users/{demo['purged']}/audit").json()
    assert audit["purged"] and audit["history"]["deleted_at"] is not None
    runs = client.get("/api/runs?kind=migrate").json()
    assert runs["total"] == len(reg.list_runs(kind="migrate")) >= 1
    migration = client.get(f"/api/migrations/{runs['items'][-1]['id']}").json()
    methods = {p["method"] for p in migration["points"]}
    assert {"retrain", "random-init"} <= methods and any(p["this_migration"] for p in migration["points"])
    # the report rebuilt from stored evaluations says what `migrate` said when it ran
    assert migration["report"]["recovered"] == pytest.approx(demo["story"]["recovered"], abs=1e-9)
    assert 0 <= migration["report"]["share_worse_than_retrain"] <= 1 and migration["report"]["seen"] is not None
    plans = client.get("/api/plans").json()
    assert plans and client.get(f"/api/plans/{plans[0]['id']}").json()["steps"] == plans[0]["steps"]
    assert client.get("/api/users?limit=5&offset=5").json()["items"][0]["external_id"] == reg.list_users(limit=5, offset=5, include_deleted=True)[0].external_id


@pytest.mark.registry
def test_the_api_on_each_catalogue_backend(populated):
    """The same routes over a registry on SQLite and on Postgres: sets, lineage, an alias's moves,
    a user's audit after a purge."""
    from conftest import prompts, user_ids

    reg = populated
    v1 = reg.import_prompts("a", "rate", prompts(50), user_ids(50), alias="production")
    v2 = reg.import_prompts("a", "rate", prompts(5, seed=1), user_ids(5), base=v1.id)
    reg.set_alias("production", v2.id, reason="incremental")
    reg.purge_user("u003", reason="erasure")
    client = TestClient(create_app(reg))
    assert [s["id"] for s in client.get("/api/sets?model=a").json()["items"]] == [v2.id, v1.id]
    detail = client.get("/api/sets/a/rate@production").json()
    assert detail["set"]["id"] == v2.id and {n["set_id"] for n in detail["lineage_up"]["nodes"]} == {v1.id, v2.id}
    moves = client.get("/api/aliases/production/history?model=a&task=rate").json()["moves"]
    assert [m["new_set_id"] for m in moves] == [v1.id, v2.id] and moves[1]["reason"] == "incremental"
    assert client.get("/api/users/u003/audit").json()["purged"] is True
    for path in ("/", "/sets?model=a", f"/sets/{v2.id}", "/aliases/production?model=a&task=rate", "/users/u003", "/runs"):
        assert client.get(path).status_code == 200, path


def test_errors_are_json_with_the_librarys_message_and_nothing_writes(demo, client):
    from prompt_registry.errors import UnknownSetError

    missing = client.get("/api/sets/9999")
    assert missing.status_code == 404 and missing.json()["type"] == "UnknownSetError"
    with pytest.raises(UnknownSetError) as err:
        demo["reg"].get_set(9999)
    assert missing.json()["error"] == str(err.value)
    assert client.get("/api/sets?limit=0").status_code == 400 and "limit must be" in client.get("/api/sets?limit=0").json()["error"]
    assert client.get("/api/runs/abc").status_code == 400
    assert client.get("/api/nothing-here").status_code == 404
    for method in ("post", "put", "patch", "delete"):
        assert getattr(client, method)("/api/sets").status_code == 405  # no write endpoint exists
    assert client.get("/sets/9999").status_code == 404 and "no prompt set" in client.get("/sets/9999").text


def test_a_token_is_needed_off_loopback_and_then_on_every_request(demo):
    refused = CliRunner().invoke(main, ["--registry", str(demo["root"] / "registry"), "ui", "--host", "0.0.0.0"])
    assert refused.exit_code == 1 and "give --token" in refused.output
    short = CliRunner().invoke(main, ["--registry", str(demo["root"] / "registry"), "ui", "--token", "short"])
    assert short.exit_code == 1 and "16 to 512" in short.output
    gated = TestClient(create_app(demo["reg"], token=TOKEN))
    assert gated.get("/api/models").status_code == 401 and gated.get("/").status_code == 401
    assert gated.get("/api/models", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert gated.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert gated.get(f"/?token={TOKEN}").status_code == 200  # sets the cookie: the pages' links then work
    assert gated.get("/sets").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _server(registry: Path, *extra: str):
    """``prompt-registry ui`` in a child process on 127.0.0.1 (stopped after)."""
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "prompt_registry.cli", "--registry", str(registry), "ui", "--port", str(port), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                headers = {"Authorization": f"Bearer {extra[-1]}"} if "--token" in extra else {}
                urllib.request.urlopen(urllib.request.Request(base + "/api/models", headers=headers), timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the UI did not start: {process.stdout.read() if process.stdout else ''}") from None
                time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_the_cli_serves_on_loopback_and_a_token_gates_it(demo):
    with _server(demo["root"] / "registry", "--token", TOKEN) as base:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/api/models", timeout=5)
        assert err.value.code == 401
        ok = urllib.request.urlopen(urllib.request.Request(base + "/api/models", headers={"Authorization": f"Bearer {TOKEN}"}), timeout=5)
        assert [m["name"] for m in json.loads(ok.read())] == [m.name for m in demo["reg"].list_models()]


@pytest.fixture(scope="module")
def browser(demo):
    if not (CHROMIUM and DRIVER):
        line = "!" * 78
        print(f"\n{line}\nBROWSER TESTS SKIPPED: no chromium/chromedriver (apt-get install chromium chromium-driver)\n{line}")
        pytest.skip("BROWSER TESTS SKIPPED: no chromium and chromium-driver on this machine (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    with _server(demo["root"] / "registry") as base:
        yield driver, base
    driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> None:
    for folder in [tmp_path, *([Path(os.environ["PROMPT_REGISTRY_UI_SHOTS"])] if os.environ.get("PROMPT_REGISTRY_UI_SHOTS") else [])]:
        folder.mkdir(parents=True, exist_ok=True)
        height = min(max(int(driver.execute_script("return document.documentElement.scrollHeight")), 600), 2400)
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False})
        driver.save_screenshot(str(folder / f"{name}.png"))  # the whole page
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        assert (folder / f"{name}.png").stat().st_size > 5_000


def test_every_page_in_a_real_browser(demo, browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver, base = browser
    reg = demo["reg"]

    def open_page(path: str) -> None:
        driver.get(base + path)
        assert "Error" not in driver.title, (path, driver.find_element(By.TAG_NAME, "main").text[:300])

    open_page("/")
    text = driver.find_element(By.TAG_NAME, "main").text
    assert all(m.name in text for m in reg.list_models()) and f"{reg.count_users():,}" in text
    _shot(driver, tmp_path, "overview")
    # the alias timeline shows every move, in order
    open_page(f"/aliases/staging?model={demo['model']}&task=tour")
    moves = reg.alias_timeline("staging", model=demo["model"], task="tour")
    rows = driver.find_elements(By.CSS_SELECTOR, "tr.move-row")
    assert len(rows) == len(moves) == 3
    for row, move in zip(rows, moves):
        assert f"v{move.new_version}" in row.text and (move.reason or "") in row.text
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.timeline rect.move")) == 3
    _shot(driver, tmp_path, "alias-timeline")
    # the migration's set page: the lineage graph names the source set
    migration_run = reg.list_runs(kind="migrate")[-1]
    mapped = migration_run.cost["results"]["mapped_set"]
    source_id = migration_run.config["sources"][0]["set_id"]
    open_page(f"/sets/{mapped}")
    nodes = {int(n.get_attribute("data-set-id")) for n in driver.find_elements(By.CSS_SELECTOR, "svg.lineage g.node")}
    assert {mapped, source_id} <= nodes
    source = reg.get_set(source_id)
    assert f"{source.model}/{source.task}@v{source.version}" in driver.find_element(By.CSS_SELECTOR, "svg.lineage").text
    assert driver.find_elements(By.CSS_SELECTOR, f'svg.lineage line.edge[data-parent="{source_id}"][data-child="{mapped}"]')
    _shot(driver, tmp_path, "set-lineage")
    # the migration page: one point per method in the chart
    open_page(f"/migrations/{migration_run.id}")
    points = driver.find_elements(By.CSS_SELECTOR, "svg.chart circle.point")
    methods = [p.get_attribute("data-method") for p in points]
    listed = [r.find_elements(By.TAG_NAME, "td")[1].text for r in driver.find_elements(By.CSS_SELECTOR, "tr.point-row")]
    assert sorted(methods) == sorted(listed) and {"retrain", "random-init", "puma"} <= set(methods)
    assert len(methods) == len(set(methods))  # one point per method: each method made one set of the target here
    assert "retrain's gain recovered" in driver.find_element(By.CSS_SELECTOR, "table.report").text
    _shot(driver, tmp_path, "migration")
    # the plan page: every step with its status
    plan = reg.planner.list()[0]
    open_page(f"/plans/{plan.id}")
    steps = driver.find_elements(By.CSS_SELECTOR, "tr.step-row")
    assert len(steps) == len(plan.steps) and all(s.status in row.text for s, row in zip(plan.steps, steps))
    _shot(driver, tmp_path, "plan")
    # the user page: a purged user says so; a live one lists its versions and the aliases that served them
    open_page(f"/users/{demo['purged']}")
    assert "purged" in driver.find_element(By.TAG_NAME, "main").text
    live = reg.list_users(limit=2)[1].external_id
    open_page(f"/users/{live}")
    versions = driver.find_elements(By.CSS_SELECTOR, "tr.version-row")
    assert len(versions) == len(reg.user_history(live).versions) >= 2 and "production" in driver.find_element(By.TAG_NAME, "main").text
    _shot(driver, tmp_path, "user")
    open_page("/sets")
    assert len(driver.find_elements(By.CSS_SELECTOR, "tr.set-row")) == min(100, len(reg.list_sets()))
    open_page("/runs?kind=migrate")
    _shot(driver, tmp_path, "runs")
    open_page(f"/runs/{migration_run.id}")
    assert "Configuration" in driver.find_element(By.TAG_NAME, "main").text and str(migration_run.forward_tokens) in driver.page_source.replace(",", "")
