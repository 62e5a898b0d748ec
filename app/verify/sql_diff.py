"""The per-key diff in SQL, inside verify's store (store.py): the same verdict and the same
Report as compare.py's in-memory `diff`, in bounded memory whatever the number of keys.

Each comparison is one UNION ALL of both sides grouped by identity, so no join has to hold
either side in memory; GROUP BY spills to disk past the store's budget. Only counts, totals
and the first differing keys (an ORDER BY ... LIMIT, a bounded top-N) come back to Python.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from app.clickhouse.schema import TABLE_OF_KIND
from app.verify.compare import DlqTopicLine, DlqTopicReport, KeyDiff, Report, TableReport, diff_dlq
from app.verify.dlq_topic import DlqTopicTally
from app.verify.store import SLOTS, VerifyStore
from app.verify.truth import LATE_HOUR_BIT, LATE_MINUTE_BIT, TruthCounts

# How many split accounts the report lists (their number is always exact).
SPLIT_ACCOUNTS_LISTED: Final = 1_000

_WINDOW_START: Final = {"minute": "minute_start", "hour": "toUInt32(minute_start - minute_start % 3600)"}
_LATE_BIT: Final = {"minute": LATE_MINUTE_BIT, "hour": LATE_HOUR_BIT}

# A country index back to its code: COUNTRY_CODES is AA, AB, ..., ZZ in order (a unit test
# checks the two agree).
_COUNTRY_OF_CODE: Final = "concat(char(65 + intDiv(code, 26)), char(65 + code % 26))"

# One row per key of either side: the truth's (count, sum) and what FINAL showed (how many
# rows, and one row's values: a key FINAL returns twice is a duplicate, never summed).
_KEYS_TABLE: Final = ("window_start UInt32, account_id UInt64, country String, t_count UInt64, t_sum Int128, "
                      "c_rows UInt64, c_count UInt64, c_sum Int128")
_DIFFERS: Final = "(t_count > 0) != (c_rows > 0) OR c_rows > 1 OR c_count != t_count OR c_sum != t_sum"


def diff_store(store: VerifyStore, counts: TruthCounts, final_exists: Mapping[str, bool],
               ledger_dlq: Mapping[tuple[str, str], int], max_diffs: int = 20,
               dlq_topic: DlqTopicTally | None = None) -> Report:
    """The whole verdict, from what the store holds (the truth's events and DLQ offsets, the
    DLQ topic's identities, FINAL's rows); `final_exists` says which tables existed."""
    store.flush()
    tables = tuple(diff_table(store, kind, final_exists.get(kind, False), max_diffs) for kind in TABLE_OF_KIND)
    topic = None if dlq_topic is None else diff_dlq_topic(store, dlq_topic, max_diffs)
    split_count, split = split_accounts(store, SPLIT_ACCOUNTS_LISTED)
    return Report(tables=tables, dlq=diff_dlq(counts.dlq, ledger_dlq), dlq_topic=topic, split_accounts=split,
                  split_account_count=split_count)


def diff_table(store: VerifyStore, kind: str, table_exists: bool, max_diffs: int) -> TableReport:
    keys = f"keys_{kind}"
    store.command(f"CREATE TABLE {keys} ({_KEYS_TABLE}) ENGINE = MergeTree ORDER BY tuple()")
    # The truth per key first, grouped on the 2-byte country index, then both sides per key.
    store.command(f"""
        INSERT INTO {keys}
        SELECT window_start, account_id, country, sumIf(n, src = 0), sumIf(amount, src = 0),
               countIf(src = 1), anyIf(n, src = 1), anyIf(amount, src = 1)
        FROM (
            SELECT ws AS window_start, account_id, {_COUNTRY_OF_CODE} AS country, n, amount, 0 AS src
            FROM (SELECT {_WINDOW_START[kind]} AS ws, account_id, country AS code, count() AS n,
                         sum(toInt128(amount)) AS amount
                  FROM events WHERE bitAnd(late, {_LATE_BIT[kind]}) = 0
                  GROUP BY ws, account_id, code)
            UNION ALL
            SELECT window_start, account_id, country, event_count, sum_amount, 1 FROM final_{kind}
        )
        GROUP BY window_start, account_id, country
        SETTINGS {store.heavy_settings}""")
    # Totals in Int256: they add up values that are each at most Int128.
    (t_rows, t_events, t_amount, c_rows, c_events, c_amount, missing, extra, different, duplicates), = store.rows(
        f"""SELECT countIf(t_count > 0), sum(t_count), toString(sum(toInt256(t_sum))),
                   sum(c_rows), sumIf(c_count, c_rows > 0), toString(sumIf(toInt256(c_sum), c_rows > 0)),
                   countIf(t_count > 0 AND c_rows = 0), countIf(t_count = 0 AND c_rows > 0),
                   countIf(t_count > 0 AND c_rows > 0 AND (c_count != t_count OR c_sum != t_sum)),
                   sumIf(c_rows - 1, c_rows > 1)
            FROM {keys} SETTINGS {store.heavy_settings}""")
    examples = tuple(
        KeyDiff((int(ws), int(account), str(country)),
                (int(tc), int(ts)) if int(tc) > 0 else None,
                (int(cc), int(cs)) if int(cr) > 0 else None,
                int(cr) > 1)
        for ws, account, country, tc, ts, cr, cc, cs in store.rows(
            f"""SELECT window_start, account_id, country, t_count, toString(t_sum), c_rows, c_count, toString(c_sum)
                FROM {keys} WHERE {_DIFFERS}
                ORDER BY window_start, account_id, country LIMIT {{n:UInt64}}
                SETTINGS {store.heavy_settings}""", {"n": max_diffs}))
    store.command(f"DROP TABLE {keys} SYNC")  # its disk is not needed any more
    return TableReport(
        kind=kind, table=TABLE_OF_KIND[kind],
        truth_rows=int(t_rows), truth_events=int(t_events), truth_amount=int(t_amount),
        clickhouse_rows=int(c_rows), clickhouse_events=int(c_events), clickhouse_amount=int(c_amount),
        missing=int(missing), extra=int(extra), different=int(different), duplicates=int(duplicates),
        table_exists=table_exists, examples=examples)


def diff_dlq_topic(store: VerifyStore, tally: DlqTopicTally, max_diffs: int) -> DlqTopicReport:
    """Distinct (source_partition, source_offset, reason, window_kind) of the topic against the
    truth's, per (partition, reason, kind): how many are missing or extra, and the first few."""
    first = max(int(max_diffs), 1)  # groupArraySorted needs a positive literal
    lines = []
    for p, slot, truth, topic, missing, extra, missing_first, extra_first in store.rows(f"""
            SELECT partition, slot, countIf(in_truth), countIf(in_topic),
                   countIf(in_truth AND NOT in_topic), countIf(in_topic AND NOT in_truth),
                   groupArraySortedIf({first})(offset, in_truth AND NOT in_topic),
                   groupArraySortedIf({first})(offset, in_topic AND NOT in_truth)
            FROM (SELECT partition, slot, offset, max(src = 0) AS in_truth, max(src = 1) AS in_topic
                  FROM (SELECT partition, slot, offset, 0 AS src FROM dlq_truth
                        UNION ALL SELECT partition, slot, offset, 1 FROM dlq_topic)
                  GROUP BY partition, slot, offset)
            GROUP BY partition, slot ORDER BY partition, slot
            SETTINGS {store.heavy_settings}"""):
        reason, kind = SLOTS[int(slot)]
        lines.append(DlqTopicLine(int(p), reason, kind, int(truth), int(topic),
                                  tuple(int(o) for o in missing_first[:max_diffs]), int(missing),
                                  tuple(int(o) for o in extra_first[:max_diffs]), int(extra)))
    return DlqTopicReport(tally.topic, tally.exists, tally.records, tuple(lines), tally.unreadable, tally.foreign,
                          dict(tally.trimmed))


def split_accounts(store: VerifyStore, listed: int) -> tuple[int, dict[int, tuple[int, ...]]]:
    """How many accounts have valid events in more than one partition, and the first `listed`
    of them (ascending) with their partitions."""
    store.command("CREATE TABLE split_accounts (account_id UInt64) ENGINE = MergeTree ORDER BY account_id")
    store.command(f"""INSERT INTO split_accounts SELECT account_id FROM events GROUP BY account_id
                      HAVING min(partition) != max(partition) SETTINGS {store.heavy_settings}""")
    (count,), = store.rows("SELECT count() FROM split_accounts")
    found = {int(account): tuple(int(p) for p in partitions) for account, partitions in store.rows(
        f"""SELECT account_id, arraySort(groupUniqArray(partition)) FROM events
            WHERE account_id IN (SELECT account_id FROM split_accounts ORDER BY account_id LIMIT {{n:UInt64}})
            GROUP BY account_id ORDER BY account_id SETTINGS {store.heavy_settings}""", {"n": listed})}
    store.command("DROP TABLE split_accounts SYNC")
    return int(count), found
