"""Valid generator records encoded column-wise: a whole chunk's JSON values and keys built by
Arrow compute kernels (integers to decimal text, string joins) instead of one Python
`%`-format per record (~1.3 us a record). The bytes are exactly what the per-record template
gave, and what orjson.dumps gives for the same dict (tests/unit/test_gen_model.py)."""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from app.gen.vocab import COUNTRIES, KIND_PAGE, KINDS, USER_AGENTS

_COUNTRY: Final = pa.array(COUNTRIES, pa.string())
_KIND: Final = pa.array(KINDS, pa.string())
_PAGE: Final = pa.array(KIND_PAGE, pa.string())
_AGENT: Final = pa.array(USER_AGENTS, pa.string())
_OCTET: Final = pa.array([str(i) for i in range(256)], pa.string())
_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_NIBBLE_SHIFTS: Final = np.arange(60, -1, -4, dtype=np.uint64)


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def _hex16(values: np.ndarray) -> pa.Array:
    """'%016x' of each uint64."""
    n = values.size
    digits = _HEX[((values[:, None] >> _NIBBLE_SHIFTS) & np.uint64(15)).astype(np.intp)]
    return pa.StringArray.from_buffers(n, pa.py_buffer(np.arange(0, 16 * n + 1, 16, dtype=np.int32)),
                                       pa.py_buffer(np.ascontiguousarray(digits)))


def encode_valid(first_index: int, account: np.ndarray, country: np.ndarray, event_time: np.ndarray,
                 amount: np.ndarray, kind: np.ndarray, session: np.ndarray, page_id: np.ndarray,
                 ) -> list[tuple[bytes, bytes]]:
    """(key, value) of every record as a valid event (the caller patches the invalid ones)."""
    n = account.size
    if n == 0:
        return []
    session = session.astype(np.uint64)
    index = np.arange(first_index, first_index + n, dtype=np.int64)
    octets = [11 + (session >> np.uint64(8)) % np.uint64(212), (session >> np.uint64(16)) & np.uint64(255),
              (session >> np.uint64(24)) & np.uint64(255), 1 + (session >> np.uint64(32)) % np.uint64(254)]
    ip = [_OCTET.take(pa.array(o.astype(np.int32))) for o in octets]
    accounts = _text(account)
    kinds = pa.array(kind.astype(np.int32))
    parts = [
        '{"event_id":"e-', pc.utf8_lpad(_text(index), 9, "0"),
        '","account_id":', accounts,
        ',"country":"', _COUNTRY.take(pa.array(country.astype(np.int32))),
        '","event_time":', _text(event_time),
        ',"amount":', _text(amount),
        ',"kind":"', _KIND.take(kinds),
        '","session_id":"s-', _hex16(session),
        '","page":"', _PAGE.take(kinds), _text(page_id),
        '","ip":"', ip[0], ".", ip[1], ".", ip[2], ".", ip[3],
        '","user_agent":"', _AGENT.take(pa.array((session % np.uint64(len(USER_AGENTS))).astype(np.int32))),
        '"}',
    ]
    values = pc.binary_join_element_wise(*parts, "").cast(pa.binary()).to_pylist()
    keys = accounts.cast(pa.binary()).to_pylist()
    return list(zip(keys, values, strict=True))
