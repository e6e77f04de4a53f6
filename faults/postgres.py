"""A private PostgreSQL cluster of our own (initdb/pg_ctl from the installed binaries) that a nemesis may crash.

Why private: the machine's PostgreSQL on 5432 is shared by every checkout and the dev stack; restarting it
would break them. This one lives in a temporary folder on a free port and is thrown away at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from scripts.ensure_services import _pg_bin

DB_NAME = "flashdeal_faults"


class PrivatePostgres:
    """One cluster under ``root``/pg on ``port``; ``crash_restart`` is an immediate stop (no checkpoint) and a start."""

    def __init__(self, root: Path, port: int) -> None:
        self.data = root / "pg"
        self.port = port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{DB_NAME}"
        initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("initdb/pg_ctl not found: apt-get install postgresql")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        # PostgreSQL refuses to run as root: as root, run its binaries as the postgres user.
        self.run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.run_as, self.pg_ctl, "-D", str(self.data), *args], check=True, stdout=subprocess.DEVNULL)

    def start(self) -> PrivatePostgres:
        """initdb (first time), start, create the database."""
        if not (self.data / "PG_VERSION").exists():
            self.data.mkdir(parents=True)
            if self.run_as:
                self.data.parent.chmod(0o755)
                shutil.chown(self.data, "postgres", "postgres")
            cmd = [*self.run_as, self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust"]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        # fsync off: a crash here is the process's (pg_ctl -m immediate), never the machine's, so the page
        # cache keeps every committed write; it spares the shared disk.
        opts = f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._ctl("-l", str(self.data / "server.log"), "-o", opts, "-w", "start")
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        return self

    def crash_restart(self) -> None:
        """Stop without a checkpoint (every connection cut, as in a crash), then start and recover."""
        self._ctl("-m", "immediate", "-w", "stop")
        self.start()

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away)."""
        if (self.data / "postmaster.pid").exists():
            self._ctl("-m", "immediate", "-w", "stop")
