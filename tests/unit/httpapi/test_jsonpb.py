"""The gateway's JSON codec against answers recorded from etcd v3.6.16's gateway (the same
requests run live against real etcd in tests/integration/test_http_gateway.py)."""

from __future__ import annotations

import pytest

from server.api.etcdserverpb import rpc_pb2 as pb
from server.httpapi import jsonpb
from server.httpapi.jsonpb import (
    DecodeError,
    NeedMore,
    NoValue,
    marshal,
    marshal_status,
    parse_first,
    scan_value,
)

NBSP = "\u00a0"

# body -> the message of etcd's InvalidArgument answer to POST /v3/kv/range
DECODE_ERRORS = {
    b'{"key":"Zm9v",}': "invalid character '}' looking for beginning of object key string",
    b"xyz": "invalid character 'x' looking for beginning of value",
    b'{"key":': "unexpected EOF",
    b'{"key":"!!"}': f'proto:{NBSP}(line 1:8): invalid value for bytes field key: "!!"',
    b'{"key":1}': f"proto:{NBSP}(line 1:8): invalid value for bytes field key: 1",
    b'{"limit":"abc","key":"Zm9v"}': f'proto:{NBSP}(line 1:10): invalid value for int64 field limit: "abc"',
    b"[]": f"proto:{NBSP}syntax error (line 1:1): unexpected token [",
    b'{"key":"Zm9v","limit":1.5}': f"proto:{NBSP}(line 1:23): invalid value for int64 field limit: 1.5",
    b'{"key":"Zm9v","key":"YmFy"}': f'proto:{NBSP}(line 1:15): duplicate field "key"',
    b'{"key" "a"}': "invalid character '\"' after object key",
    b'{"key":"a" "b"}': "invalid character '\"' after object key:value pair",
    b'{"key":tru}': "invalid character '}' in literal true (expecting 'e')",
    b'{"key":-}': "invalid character '}' in numeric literal",
    b'{"key":1.}': "invalid character '}' after decimal point in numeric literal",
    b'{"key":1e}': "invalid character '}' in exponent of numeric literal",
    b'{"key":"\\x"}': "invalid character 'x' in string escape code",
    b'{"key":"\\u12x4"}': "invalid character 'x' in \\u hexadecimal character escape",
    b'{"key":"a\x01"}': "invalid character '\\x01' in string literal",
    b'{"key":[1,]}': "invalid character ']' looking for beginning of value",
    b'{"key":[1 2]}': "invalid character '2' after array element",
    b"'a'": "invalid character '\\'' looking for beginning of value",
    b'{\n  "key": "Zm9v",\n  "limit": "x"\n}': f'proto:{NBSP}(line 3:12): invalid value for int64 field limit: "x"',
    b'{"sort_order":"DESCEND","sort_order":1}': f'proto:{NBSP}(line 1:25): duplicate field "sort_order"',
    b'{"sortOrder":1.5}': f"proto:{NBSP}(line 1:14): invalid value for enum field sortOrder: 1.5",
    b'{"key":"\\ud800"}': f"proto:{NBSP}unexpected EOF",
    b'{"key":"\\ud800\\u0041xxxx"}': f'proto:{NBSP}syntax error (line 1:8): invalid escape code "\\\\u0041" in string',
    b'{"key":"a\xff"}': f"proto:{NBSP}syntax error (line 1:8): invalid UTF-8 in string",
    b"null": f"proto:{NBSP}syntax error (line 1:1): unexpected token null",
}


@pytest.mark.parametrize("body", list(DECODE_ERRORS))
def test_decode_errors_are_etcds(body: bytes) -> None:
    with pytest.raises(DecodeError) as e:
        parse_first(body, pb.RangeRequest)
    assert str(e.value) == DECODE_ERRORS[body]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", pb.RangeRequest()),
        (b" \n\t", pb.RangeRequest()),
        (b"{}", pb.RangeRequest()),
        (b'{"key":"Zm9v"} trailing', pb.RangeRequest(key=b"foo")),
        (b'{"key":"Zm9v","bogus":{"a":[1,{"b":null}]}}', pb.RangeRequest(key=b"foo")),
        (b'{"key":"Zm9v","limit":null}', pb.RangeRequest(key=b"foo")),
        (b'{"key":"Zm9v-_"}', pb.RangeRequest(key=b"foo\xfb")),
        (b'{"key":"Zm9"}', pb.RangeRequest(key=b"fo")),
        (b'{"key":"Zh=="}', pb.RangeRequest(key=b"f")),
        (b'{"limit":"5"}', pb.RangeRequest(limit=5)),
        (b'{"limit":1e1}', pb.RangeRequest(limit=10)),
        (b'{"limit":"1e1"}', pb.RangeRequest(limit=10)),
        (b'{"limit":100.0e-2}', pb.RangeRequest(limit=1)),
        (b'{"limit":-0}', pb.RangeRequest()),
        (b'{"sort_order":"DESCEND"}', pb.RangeRequest(sort_order=pb.RangeRequest.DESCEND)),
        (b'{"sortOrder":2}', pb.RangeRequest(sort_order=pb.RangeRequest.DESCEND)),
        (b'{"sort_order":"NOPE"}', pb.RangeRequest()),
        (b'{"sort_order":7}', pb.RangeRequest(sort_order=7)),  # type: ignore[arg-type]
        (b'{"keys_only":true,"rangeEnd":"AA=="}', pb.RangeRequest(keys_only=True, range_end=b"\0")),
        (b'{"key":"\\u00e9"}', None),
    ],
)
def test_decoding_accepts_what_etcd_accepts(body: bytes, expected: pb.RangeRequest | None) -> None:
    if expected is None:
        with pytest.raises(DecodeError):
            parse_first(body, pb.RangeRequest)
        return
    assert parse_first(body, pb.RangeRequest) == expected


def test_decoding_oneofs_and_nested_messages() -> None:
    body = (
        b'{"compare":[{"key":"YQ==","target":"VERSION","version":"0"}],'
        b'"success":[{"request_put":{"key":"YQ==","value":"Yg=="}},'
        b'{"request_txn":{"failure":[{"requestRange":{"key":"YQ=="}}]}}]}'
    )
    t = parse_first(body, pb.TxnRequest)
    assert t.compare[0].WhichOneof("target_union") == "version"
    assert t.success[0].request_put.value == b"b"
    assert t.success[1].request_txn.failure[0].request_range.key == b"a"
    with pytest.raises(DecodeError) as e:
        parse_first(b'{"compare":[{"version":"1","value":"YQ=="}]}', pb.TxnRequest)
    assert str(e.value) == (
        f'proto:{NBSP}(line 1:28): error parsing "value", oneof etcdserverpb.Compare.target_union is already set'
    )
    with pytest.raises(DecodeError) as e:
        parse_first(b'{"compare":"x"}', pb.TxnRequest)
    assert str(e.value) == f'proto:{NBSP}syntax error (line 1:12): unexpected token "x"'


def test_integer_ranges() -> None:
    assert parse_first(b'{"limit":"9223372036854775807"}', pb.RangeRequest).limit == 2**63 - 1
    with pytest.raises(DecodeError):
        parse_first(b'{"limit":"9223372036854775808"}', pb.RangeRequest)
    assert parse_first(b'{"ID":"18446744073709551615"}', pb.MemberRemoveRequest).ID == 2**64 - 1
    with pytest.raises(DecodeError):
        parse_first(b'{"ID":-1}', pb.MemberRemoveRequest)
    with pytest.raises(DecodeError):
        parse_first(b'{"limit":" 1"}', pb.RangeRequest)


def test_nesting_limit_is_an_error_not_a_crash() -> None:
    deep = b'{"success":[{"request_txn":' * 400 + b"{}" + b"}]}" * 400
    with pytest.raises(DecodeError) as e:
        parse_first(deep, pb.TxnRequest)
    assert "exceeded max recursion depth" in str(e.value)


# -- encoding -------------------------------------------------------------------------------------


def test_marshal_is_protojson_as_etcds_binary_writes_it() -> None:
    r = pb.RangeResponse(count=1)
    r.header.cluster_id = 15118495548433857066
    r.header.member_id = 13668033151171901709
    r.header.revision = 2
    r.header.raft_term = 2
    r.kvs.add(key=b"foo", create_revision=2, mod_revision=2, version=1, value=b"bar")
    assert marshal(r) == (
        '{"header":{"cluster_id":"15118495548433857066", "member_id":"13668033151171901709", '
        '"revision":"2", "raft_term":"2"}, "kvs":[{"key":"Zm9v", "create_revision":"2", '
        '"mod_revision":"2", "version":"1", "value":"YmFy"}], "count":"1"}'
    )


def test_marshal_field_rules() -> None:
    s = pb.StatusResponse(version="3.5.0", dbSize=20480, errors=["a", "b"])
    s.downgradeInfo.SetInParent()
    assert marshal(s) == '{"version":"3.5.0", "dbSize":"20480", "errors":["a", "b"], "downgradeInfo":{}}'
    assert marshal(pb.HashResponse(hash=3641551221)) == '{"hash":3641551221}'
    assert marshal(pb.HashKVResponse(compact_revision=-1)) == '{"compact_revision":"-1"}'
    assert marshal(pb.DefragmentResponse()) == "{}"
    a = pb.AlarmResponse()
    a.alarms.add(memberID=7, alarm=pb.NOSPACE)
    a.alarms.add(memberID=8, alarm=99)
    assert marshal(a) == '{"alarms":[{"memberID":"7", "alarm":"NOSPACE"}, {"memberID":"8", "alarm":99}]}'
    t = pb.TxnResponse(succeeded=False)
    t.responses.add().response_put.SetInParent()
    assert marshal(t) == '{"responses":[{"response_put":{}}]}'
    m = pb.Member(name='a"\\<\n\x01é')
    assert marshal(m) == '{"name":"a\\"\\\\<\\n\\u0001é"}'


def test_compact_form_is_encoding_json_compaction() -> None:
    m = pb.Member(ID=1, name="<a&b>\u2028", peerURLs=["x", "y"])
    assert marshal(m, compact=True) == (
        '{"ID":"1","name":"\\u003ca\\u0026b\\u003e\\u2028","peerURLs":["x","y"]}'
    )


def test_marshal_status() -> None:
    assert marshal_status(3, "etcdserver: key is not provided") == (
        '{"code":3, "message":"etcdserver: key is not provided"}'
    )
    assert marshal_status(5, "a<b", compact=True) == '{"code":5,"message":"a\\u003cb"}'


# -- the request stream -----------------------------------------------------------------------------


def test_scan_value_splits_a_stream_like_json_decoder() -> None:
    buf = b' {"ID":1}\n{"ID":2} 7 "s" true [1,{}] '
    spans = []
    pos = 0
    while True:
        try:
            start, end = scan_value(buf, pos)
        except NoValue:
            break
        spans.append(buf[start:end])
        pos = end
    assert spans == [b'{"ID":1}', b'{"ID":2}', b"7", b'"s"', b"true", b"[1,{}]"]


@pytest.mark.parametrize("partial", [b'{"ID":', b"12", b"tru", b'"ab', b"[1,", b"  ", b"-", b"true"])
def test_scan_value_asks_for_more_before_eof(partial: bytes) -> None:
    with pytest.raises(NeedMore):
        scan_value(partial, 0, eof=False)


def test_scan_value_at_eof() -> None:
    assert scan_value(b"12", 0, eof=True) == (0, 2)
    assert scan_value(b"{}", 0, eof=False) == (0, 2)
    with pytest.raises(DecodeError, match="unexpected EOF"):
        scan_value(b"-", 0, eof=True)
    with pytest.raises(NoValue):
        scan_value(b" \n", 0, eof=True)


def test_go_quote_char() -> None:
    assert jsonpb._quote_char(ord("'")) == "'\\''"
    assert jsonpb._quote_char(ord('"')) == "'\"'"
    assert jsonpb._quote_char(0x0A) == "'\\n'"
    assert jsonpb._quote_char(0x7F) == "'\\x7f'"
    assert jsonpb._quote_char(0xC3) == "'Ã'"
    assert jsonpb._quote_char(0xA0) == "'\\u00a0'"
