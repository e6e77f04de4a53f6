"""The process harness's pure parts: ports, waits, the granian command line, the LB's config from deploy/."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest

from harness.granian import granian_command
from harness.nginx import write_config
from harness.ports import free_port, free_ports
from harness.waits import http_answers, wait_for, wait_until


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(5)
    assert len(set(ports)) == 5 and list(ports) == sorted(ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))


def test_waits_give_up_at_their_deadline() -> None:
    start = time.monotonic()
    assert wait_until(lambda: False, 0.2, 0.05) is False
    assert 0.2 <= time.monotonic() - start < 2
    with pytest.raises(TimeoutError, match="nothing happened"):
        wait_for(lambda: False, 0.1, "nothing happened")
    calls = iter([False, False, True])
    wait_for(lambda: next(calls), 5, "never")


def test_a_closed_port_does_not_answer_http() -> None:
    assert http_answers(f"http://127.0.0.1:{free_port()}/healthz") is False


def test_granian_command_is_the_procfiles() -> None:
    procfile = (Path(__file__).resolve().parents[2] / "Procfile").read_text()
    web1 = re.search(r"^web1: scripts/proc web1 granian (.*)$", procfile, re.M)
    assert web1, "Procfile has no web1 line"
    cmd = granian_command(8001, workers=1, threads=8)
    assert " ".join(cmd[3:]) == web1.group(1)  # after "python -m granian"
    assert cmd[-3:-1] == ["--http", "1"] and "--backpressure" not in cmd
    assert granian_command(8001, backpressure=512)[-3:-1] == ["--backpressure", "512"]


def test_lb_config_listens_on_its_port_in_front_of_the_given_nodes(tmp_path: Path) -> None:
    conf = write_config(tmp_path, 18080, [18001, 18002], read_timeout_s=1).read_text()
    assert "listen 127.0.0.1:18080" in conf and "listen 127.0.0.1:8080" not in conf
    assert re.findall(r"server 127\.0\.0\.1:(\d+)", conf) == ["18001", "18002"]
    assert "proxy_read_timeout 1s;" in (tmp_path / "nginx-proxy.conf").read_text()
    assert (tmp_path / "nginx-api-errors.conf").exists()


def test_a_partitioned_cluster_starts_its_first_node_in_the_namespace_announcing_the_address_both_sides_reach(
    tmp_path: Path,
) -> None:
    from faults.partition import Netns, PartitionedCluster
    from scripts.local_redis.cluster import ClusterPorts

    ns = Netns()  # names and addresses only: nothing is created
    t = PartitionedCluster(ns, tmp_path, ClusterPorts(nodes=(7101, 7102, 7103, 7104, 7105, 7106)))
    inside, outside = t.node_args(7101), t.node_args(7102)
    assert inside[: len(ns.launch)] == ns.launch and outside[0] != "ip"
    for args, addr in ((inside, ns.r_ns), (outside, ns.r_host)):
        assert args[args.index("--bind") + 1] == addr
        assert args[args.index("--cluster-announce-ip") + 1] == addr
    assert t.nodes_setting.split(",")[:2] == [f"{ns.r_ns}:7101", f"{ns.r_host}:7102"]
