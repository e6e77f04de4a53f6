"""Deployment files: nginx config, docker-compose (checked by Debian's docker-compose), monitoring files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scripts.local_redis.cluster import ClusterPorts
from scripts.local_redis.sentinel import SentinelPorts
from shared.settings import DEFAULT_AMQP_URL, Settings
from tests.environment import ROOT
from tests.helpers import require_tool

PROCFILE_NAMES = {"nginx", "web1", "web2", "web3", "worker1", "worker2", "beat", "flower"}


def procfile() -> dict[str, str]:
    """Procfile entries: name -> command line."""
    out: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, command = line.partition(":")
            out[name.strip()] = command.strip()
    return out


def nginx_binary() -> str | None:
    """nginx on PATH or in /usr/sbin."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def docker_compose() -> str | None:
    """Debian's docker-compose, installed on the spot when missing and we are root (.ci/run installs it too)."""
    found = shutil.which("docker-compose")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-compose"]
    try:
        if subprocess.run(cmd, env=env, capture_output=True, timeout=400).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
            subprocess.run(cmd, env=env, capture_output=True, timeout=400)
    except subprocess.TimeoutExpired:
        return None
    return shutil.which("docker-compose")


def test_procfile_runs_the_whole_stack() -> None:
    procs = procfile()
    assert set(procs) == PROCFILE_NAMES
    for n in (1, 2, 3):
        assert f"--port 800{n}" in procs[f"web{n}"] and "web.wsgi:app" in procs[f"web{n}"]
    for n in (1, 2):
        assert f"-n worker{n}@%h" in procs[f"worker{n}"] and "-I worker.metrics" in procs[f"worker{n}"]
    assert "daemon off;" in procs["nginx"] and "deploy/nginx.conf" in procs["nginx"]
    # Flower takes FLOWER_BASIC_AUTH from the environment; a password on the command line shows in `ps`.
    assert "basic-auth" not in procs["flower"] and "FLOWER_BASIC_AUTH" not in procs["flower"]
    assert "--port=5555" in procs["flower"]


def test_nginx_config_is_valid(tmp_path: Path) -> None:
    nginx = nginx_binary()
    if nginx is None:
        pytest.fail("nginx is not installed: apt-get install nginx (.ci/run and make up install it)")
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for port in (8001, 8002, 8003):
        assert re.search(rf"server 127\.0\.0\.1:{port} max_fails=\d+ fail_timeout=\d+s;", conf)
    assert "listen 127.0.0.1:8080" in conf and "keepalive " in conf
    proxy = (ROOT / "deploy" / "nginx-proxy.conf").read_text()
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in proxy
    r = subprocess.run(
        [nginx, "-t", "-p", f"{tmp_path}/", "-c", str(ROOT / "deploy" / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def compose_config(profile: str | None = None) -> dict:
    """`docker-compose config` output (the file validated and resolved), parsed; with ``profile``'s services."""
    binary = require_tool(docker_compose(), "docker-compose", "docker-compose")
    env = {**os.environ, "SECRET_KEY": "x" * 48, "FLOWER_BASIC_AUTH": "admin:secret"}
    env.pop("CELERY_BROKER_URL", None)
    if profile is not None:
        env["FLASHDEAL_REDIS_TOPOLOGY"] = profile
    else:
        env.pop("FLASHDEAL_REDIS_TOPOLOGY", None)
    args = [binary, *(["--profile", profile] if profile else []), "config"]
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)


def test_docker_compose_is_valid_and_complete() -> None:
    config = compose_config()
    services = config["services"]
    expected = PROCFILE_NAMES | {"redis", "postgres", "migrate", "prometheus", "grafana"}
    assert expected <= set(services), expected - set(services)
    redis_cmd = services["redis"]["command"]
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "manage.py migrate" in " ".join(services["migrate"]["command"])
    for name in PROCFILE_NAMES:
        deps = services[name].get("depends_on", {})
        assert "migrate" in deps, f"{name} must wait for the migrate step"
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert Path(source).exists(), source


def _ports(command: list[str] | str) -> set[int]:
    text = " ".join(command) if isinstance(command, list) else command
    return {int(p) for p in re.findall(r"(?:--port |port )(\d+)", text)}


def _app_settings(services: dict) -> Settings:
    """The settings every app container gets (the same environment for all: web1's)."""
    env = {k: "" if v is None else str(v) for k, v in services["web1"]["environment"].items()}
    return Settings.from_env(env)


def test_docker_compose_single_topology_by_default() -> None:
    services = compose_config()["services"]
    settings = _app_settings(services)
    assert settings.redis_topology == "single" and settings.celery_broker_url == settings.redis_url


def test_docker_compose_sentinel_profile_is_the_local_sentinel_topology() -> None:
    services = compose_config("sentinel")["services"]
    ports = SentinelPorts.default()
    data = {p for name, s in services.items() if name.startswith("redis-sentinel-") for p in _ports(s["command"])}
    sentinels = {p for name, s in services.items() if name.startswith("sentinel") for p in _ports(s["command"])}
    assert data == set(ports.data) and sentinels == set(ports.sentinels)
    assert "rabbitmq" in services
    # The app finds them by the settings' defaults for the topology: the same as `make up`'s.
    settings = _app_settings(services)
    assert settings.redis_topology == "sentinel" and settings.celery_broker_url == DEFAULT_AMQP_URL
    assert ",".join(f"{h}:{p}" for h, p in settings.redis_sentinels) == ports.sentinels_setting


def test_docker_compose_cluster_profile_is_the_local_cluster() -> None:
    services = compose_config("cluster")["services"]
    nodes = {p for name, s in services.items() if name.startswith("redis-cluster-7") for p in _ports(s["command"])}
    assert nodes == set(ClusterPorts.default().nodes)
    assert "--cluster-replicas 1" in " ".join(services["redis-cluster-create"]["command"])
    assert "rabbitmq" in services
    settings = _app_settings(services)
    assert settings.redis_topology == "cluster" and settings.celery_broker_url == DEFAULT_AMQP_URL
    assert ",".join(f"{h}:{p}" for h, p in settings.redis_cluster_nodes) == ClusterPorts.default().nodes_setting


def test_compose_commands_are_the_procfile_commands() -> None:
    services = compose_config()["services"]
    for name, command in procfile().items():
        compose_command = services[name]["command"]
        assert isinstance(compose_command, list) and len(compose_command) == 1, compose_command
        # Compose writes `$$` for a literal `$` (the shell in the container expands it, as under honcho).
        assert compose_command[0].replace("$$", "$") == command, name
    # And the image runs them through a shell, like honcho does.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/bin/sh", "-c"]' in dockerfile


def test_prometheus_scrapes_every_process() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "monitoring" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    procs = procfile()
    ports = {"8001", "8002", "8003", "5555"} | set(re.findall(r"WORKER_METRICS_PORT=(\d+)", " ".join(procs.values())))
    assert {f"127.0.0.1:{p}" for p in ports} <= targets


def test_prometheus_config_passes_promtool() -> None:
    promtool = require_tool(shutil.which("promtool"), "promtool", "prometheus")
    r = subprocess.run([promtool, "check", "config", str(ROOT / "deploy" / "monitoring" / "prometheus.yml")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_grafana_dashboard_uses_exported_metrics() -> None:
    base = ROOT / "deploy" / "monitoring" / "grafana"
    dashboard = json.loads((base / "dashboards" / "flashdeal.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("admissions", "p99", "outbox lag", "persisted", "stock remaining", "workers online"):
        assert needed in titles, needed
    exported = set()
    for module in ("web/metrics.py", "worker/metrics.py"):
        exported |= set(re.findall(r'"(flashdeal_[a-z_]+)"', (ROOT / module).read_text()))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:flashdeal|flower)_[a-z_]+)", target["expr"]):
                base_name = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base_name.startswith("flower_") or base_name in exported, (panel["title"], name)
            assert target["datasource"]["uid"] == "flashdeal-prometheus"
    datasource = yaml.safe_load((base / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "flashdeal-prometheus"


def test_make_up_checks_nginx() -> None:
    makefile = (ROOT / "Makefile").read_text()
    up = makefile[makefile.index("\nup:") :].split("\n\n")[0]
    assert "scripts/ensure_nginx.py" in up
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "ensure_nginx.py")], capture_output=True, text=True)
    assert r.returncode == (0 if nginx_binary() else 1), r.stderr


def test_a_missing_tool_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install prometheus"):
        require_tool(None, "promtool", "prometheus")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        require_tool(None, "promtool", "prometheus")
    assert require_tool("/usr/bin/promtool", "promtool", "prometheus") == "/usr/bin/promtool"
