"""The outage proxy itself, against the real Postgres: traffic flows, a refused port
refuses, a black hole stalls a query until the client's own timeout, restore heals."""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.faultproxy import FaultProxy


def _url(postgres: str, port: int) -> str:
    return postgres.replace("127.0.0.1:5432", f"127.0.0.1:{port}")


def test_proxy_passes_refuses_stalls_and_heals(postgres: str) -> None:
    with FaultProxy("127.0.0.1", 5432) as proxy:
        url = _url(postgres, proxy.port)
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
            proxy.blackhole()
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(url, connect_timeout=2)
            assert time.monotonic() - t0 >= 1.5  # it waited for the client's timeout, not refused
            proxy.restore()
            assert conn.execute("SELECT 1").fetchone() == (1,)  # an open connection survives a stall
            proxy.refuse()
            t0 = time.monotonic()
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(url, connect_timeout=5)
            assert time.monotonic() - t0 < 1.0  # refused at once
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")  # the open connection was cut
        proxy.restore()
        with psycopg.connect(url, connect_timeout=5) as conn:
            assert conn.execute("SELECT 2").fetchone() == (2,)
