"""Find Redis and PostgreSQL, or start private servers from local binaries under var/.

Order (README.md, "The two commands"): REDIS_URL / DATABASE_URL; else the default local ports; else
private servers under var/; else stop with a message naming the install command. Creates the
database if missing. Prints ``export NAME=value`` lines for the Makefile to eval.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
sys.path.insert(0, str(ROOT))

from scripts.local_redis.cluster import ClusterPorts, ClusterTopology  # noqa: E402
from scripts.local_redis.sentinel import MASTER_NAME, SentinelPorts, SentinelTopology  # noqa: E402
from shared.redis import server_policy  # noqa: E402
from shared.settings import ConfigError, default_broker_url, parse_hosts  # noqa: E402


def redact(url: str) -> str:
    """The URL with its password replaced by '***', for messages (they end up in terminals and CI logs)."""
    u = urlparse(url)
    if u.password is None:
        return url
    netloc = u.netloc.rsplit("@", 1)[1]
    return u._replace(netloc=f"{u.username or ''}:***@{netloc}").geturl()


def export_line(name: str, value: str) -> str:
    """An ``export`` line the Makefile can eval safely, whatever the value holds (quotes, $, spaces)."""
    return f"export {name}={shlex.quote(value)}"


def say(msg: str) -> None:
    """Progress goes to stderr; stdout carries only the export lines."""
    print(f"[services] {msg}", file=sys.stderr)


def port_open(host: str, port: int) -> bool:
    """True if something listens on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def redis_ok(url: str) -> bool:
    """True if a Redis answers PING at url."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except Exception:
        return False


def pg_ok(url: str, dbname: str = "postgres") -> bool:
    """True if PostgreSQL accepts a connection at url (to the maintenance database)."""
    try:
        with psycopg.connect(_libpq(url, dbname), connect_timeout=2):
            return True
    except Exception:
        return False


def _libpq(url: str, dbname: str | None = None) -> str:
    u = urlparse(url.replace("postgresql+psycopg://", "postgresql://"))
    if dbname is not None:
        u = u._replace(path="/" + dbname)
    return u.geturl()


def report_redis(url: str) -> str:
    """Say how the Redis at url keeps its data; return url. Stops on one that may evict gate keys."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1, decode_responses=True)
    try:
        policy = server_policy(client)
    finally:
        client.close()
    if not policy:
        say(f"Redis at {redact(url)}: CONFIG GET is not allowed, persistence and eviction policy unknown")
        return url
    aof, save = policy.get("appendonly") == "yes", policy.get("save", "")
    persistence = " + ".join(p for p in ("AOF" if aof else "", f"RDB snapshots ({save})" if save else "") if p)
    say(
        f"Redis at {redact(url)}: persistence "
        f"{persistence or 'OFF (a restart loses every order not yet in PostgreSQL)'}, "
        f"maxmemory-policy {policy.get('maxmemory-policy')}"
    )
    if policy.get("maxmemory-policy") != "noeviction":
        sys.exit(
            f"Redis at {redact(url)} has maxmemory-policy {policy.get('maxmemory-policy')!r}: it may evict stock "
            "and order keys. Set it to noeviction (CONFIG SET maxmemory-policy noeviction) or use another Redis."
        )
    return url


def ensure_sentinel() -> list[str]:
    """FLASHDEAL_REDIS_TOPOLOGY=sentinel: use REDIS_SENTINELS, or start the local topology under var/."""
    if os.environ.get("REDIS_SENTINELS"):
        return []
    if not shutil.which("redis-server"):
        sys.exit(
            "FLASHDEAL_REDIS_TOPOLOGY=sentinel needs the redis-server binary. Install it: apt-get install redis-server"
        )
    ports = SentinelPorts.default()
    topology = SentinelTopology(VAR / "redis-sentinel", ports)
    say(f"Redis Sentinel topology: data nodes {ports.data} (first is the initial primary), sentinels {ports.sentinels}")
    say(f"Sentinel topology {topology.ensure()} (var/redis-sentinel; `rm -rf var/redis-sentinel` for a fresh one)")
    primary = topology.primary()
    report_redis(f"redis://127.0.0.1:{primary}/0")
    return [export_line("REDIS_SENTINELS", ports.sentinels_setting), export_line("REDIS_SENTINEL_MASTER", MASTER_NAME)]


def ensure_cluster() -> list[str]:
    """FLASHDEAL_REDIS_TOPOLOGY=cluster: use REDIS_CLUSTER_NODES, or start the local cluster under var/."""
    given = os.environ.get("REDIS_CLUSTER_NODES")
    if given:
        try:
            nodes = parse_hosts(given, "REDIS_CLUSTER_NODES")
        except ConfigError as exc:
            sys.exit(str(exc))
        if not any(port_open(host, port) for host, port in nodes):
            where = ", ".join(f"{host}:{port}" for host, port in nodes)
            sys.exit(f"REDIS_CLUSTER_NODES: nothing answers at {where}. Start that cluster or unset it.")
        say(f"Redis Cluster at {given}")
        return []
    if not shutil.which("redis-server") or not shutil.which("redis-cli"):
        sys.exit(
            "FLASHDEAL_REDIS_TOPOLOGY=cluster needs the redis-server and redis-cli binaries. "
            "Install them: apt-get install redis-server"
        )
    ports = ClusterPorts.default()
    topology = ClusterTopology(VAR / "redis-cluster", ports)
    say(f"Redis Cluster: nodes {ports.nodes} (three primaries, three replicas)")
    say(f"Redis Cluster {topology.ensure()} (var/redis-cluster; `rm -rf var/redis-cluster` for a fresh one)")
    for primary in topology.primaries():
        report_redis(f"redis://127.0.0.1:{primary}/0")
    return [export_line("REDIS_CLUSTER_NODES", ports.nodes_setting)]


def ensure_redis() -> str:
    """Return a reachable REDIS_URL, starting a private server if needed."""
    url = os.environ.get("REDIS_URL")
    if url:
        if not redis_ok(url):
            sys.exit(f"REDIS_URL={redact(url)} does not answer PING. Start that server or unset REDIS_URL.")
        return report_redis(url)
    default = "redis://127.0.0.1:6379/0"
    if redis_ok(default):
        return report_redis(default)
    binary = shutil.which("redis-server")
    if not binary:
        sys.exit(
            "No Redis found on 127.0.0.1:6379 and no redis-server binary. Install it: apt-get install redis-server"
        )
    private = "redis://127.0.0.1:6380/0"
    if not redis_ok(private):
        (VAR / "redis").mkdir(parents=True, exist_ok=True)
        say("starting a private Redis on 127.0.0.1:6380 (var/redis)")
        subprocess.run(
            [
                binary,
                "--port",
                "6380",
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--dir",
                str(VAR / "redis"),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                str(VAR / "redis" / "redis.log"),
            ],
            check=True,
        )
        for _ in range(50):
            if redis_ok(private):
                break
            time.sleep(0.1)
    return private


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def ensure_postgres() -> str:
    """Return a reachable DATABASE_URL (database not yet checked), starting a private server if needed."""
    url = os.environ.get("DATABASE_URL")
    if url:
        if not pg_ok(url):
            sys.exit(f"DATABASE_URL={redact(url)} is not reachable. Start that server or unset DATABASE_URL.")
        return url
    default = "postgresql+psycopg://postgres@127.0.0.1:5432/flashdeal"
    if pg_ok(default):
        return default
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        sys.exit(
            "No PostgreSQL on 127.0.0.1:5432 and no initdb/pg_ctl binaries. Install it: apt-get install postgresql"
        )
    data = VAR / "pg"
    private = "postgresql+psycopg://postgres@127.0.0.1:5433/flashdeal"
    if not pg_ok(private):
        run_as = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            if run_as:
                shutil.chown(data, "postgres", "postgres")
            say("initialising a private PostgreSQL in var/pg")
            subprocess.run(
                [*run_as, initdb, "-D", str(data), "-U", "postgres", "--auth=trust"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        say("starting the private PostgreSQL on 127.0.0.1:5433")
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(data / "server.log"),
                "-o",
                "-p 5433 -k /tmp -c listen_addresses=127.0.0.1",
                "-w",
                "start",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return private


def ensure_database(url: str) -> None:
    """Create the database named in url if it does not exist."""
    dbname = urlparse(_libpq(url)).path.lstrip("/") or "flashdeal"
    with psycopg.connect(_libpq(url, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone() is None:
            say(f"creating database {dbname}")
            conn.execute(f'CREATE DATABASE "{dbname}"')


def main() -> None:
    """Resolve both services and print the export lines."""
    topology = os.environ.get("FLASHDEAL_REDIS_TOPOLOGY", "single").strip().lower()
    extra = {"sentinel": ensure_sentinel, "cluster": ensure_cluster}.get(topology, list)()
    # With Sentinel, REDIS_URL gives only the database (and credentials) of the primary the sentinels name;
    # with a cluster only the credentials of its nodes.
    credentials_only = topology in ("sentinel", "cluster")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0") if credentials_only else ensure_redis()
    db_url = ensure_postgres()
    if len(sys.argv) > 1:  # an explicit database name (the test suite uses its own)
        u = urlparse(_libpq(db_url))
        db_url = u._replace(path="/" + sys.argv[1]).geturl().replace("postgresql://", "postgresql+psycopg://", 1)
    ensure_database(db_url)
    print(export_line("REDIS_URL", redis_url))
    print(export_line("DATABASE_URL", db_url))
    for line in extra:
        print(line)
    broker = os.environ.get("CELERY_BROKER_URL") or default_broker_url(topology, redis_url)
    if broker.startswith("amqp://"):
        amqp = urlparse(broker)
        if not port_open(amqp.hostname or "127.0.0.1", amqp.port or 5672):
            sys.exit(f"No RabbitMQ answers at {amqp.hostname}:{amqp.port or 5672} (this topology's Celery broker). "
                     "Install and start it: apt-get install rabbitmq-server")  # fmt: skip
    if not os.environ.get("CELERY_BROKER_URL"):
        print(export_line("CELERY_BROKER_URL", broker))


if __name__ == "__main__":
    main()
