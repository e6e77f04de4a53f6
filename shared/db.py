"""SQLAlchemy engine and session factory; one transaction per unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import Settings


class Database:
    """Holds one engine and its session factory for a process."""

    def __init__(self, settings: Settings, **engine_kwargs: object) -> None:
        kwargs: dict[str, object] = {"pool_pre_ping": True, "pool_size": 5, "max_overflow": 10}
        kwargs.update(engine_kwargs)
        self.engine: Engine = create_engine(settings.database_url, **kwargs)
        self.session_factory = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """Yield a session inside one transaction: commit on success, roll back on error."""
        with self.session_factory() as session, session.begin():
            yield session

    @contextmanager
    def snapshot(self) -> Iterator[Session]:
        """Yield a session whose reads all see one snapshot: a REPEATABLE READ transaction, rolled back at the end.

        Why: under READ COMMITTED each statement sees the commits made before it, so a figure computed from
        several reads (an expected stock) can count a row twice or not at all if a commit lands in between.
        """
        with self.session_factory() as session:
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Yield a session for reads only."""
        with self.session_factory() as session:
            yield session

    def dispose(self) -> None:
        """Drop pooled connections (after fork: never share sockets with the parent)."""
        self.engine.dispose(close=False)
