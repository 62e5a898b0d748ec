"""The processor's decoder and verify's truth are independent implementations of
contract §2; on the corners the contract leaves to us they must still agree
(rules in docs/input.md)."""

import json

import pytest

from app.processor.decode import InvalidEvent, decode_event
from app.verify.truth import parse_event

BASE = '{"event_id":"e","account_id":1,"country":"DE","event_time":5,"amount":7,"kind":"k"'

CASES = {
    "plain": (BASE + "}").encode(),
    "nested_too_deep": (BASE + ',"x":' + "[" * 3000 + "]" * 3000 + "}").encode(),
    "invalid_utf8_in_extra_field": BASE.encode() + b',"x":"\xc0\xaf"}',
    "lone_surrogate_in_extra_field": (BASE + ',"x":"\\ud800"}').encode(),
    "lone_surrogate_in_kind": BASE.replace('"kind":"k"', '"kind":"\\udc00"').encode() + b"}",
    "surrogate_pair": (BASE + ',"x":"\\ud83d\\ude00"}').encode(),
    "repeated_field_first_invalid": ('{"amount":1.5,' + BASE[1:] + "}").encode(),
    "repeated_field_both_valid": ('{"amount":3,' + BASE[1:] + "}").encode(),
    "repeated_field_in_nested_object": (BASE + ',"meta":{"amount":1.5}}').encode(),
    "repeated_extra_field": (BASE + ',"x":1,"x":2.5}').encode(),
    "utf8_text_in_extra_field": (BASE + ',"city":"Zürich"}').encode(),
    "bom": b"\xef\xbb\xbf" + (BASE + "}").encode(),
    "utf16": (BASE + "}").encode("utf-16"),
    "whitespace_around": b"  " + (BASE + "}").encode() + b"\n",
    "huge_int_extra": (BASE + ',"x":' + "9" * 500 + "}").encode(),
    "exponent_int": BASE.replace('"amount":7', '"amount":7e0').encode() + b"}",
    "nan": BASE.replace('"amount":7', '"amount":NaN').encode() + b"}",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_processor_and_truth_agree(name: str) -> None:
    raw = CASES[name]
    try:
        decode_event(raw)
        processor_valid = True
    except InvalidEvent:
        processor_valid = False
    assert processor_valid == (parse_event(raw) is not None)


def test_repeated_field_last_value_wins() -> None:
    raw = ('{"amount":3,' + BASE[1:] + "}").encode()
    assert decode_event(raw).amount == 7
    ev = parse_event(raw)
    assert ev is not None and json.loads(raw)["amount"] == 7
