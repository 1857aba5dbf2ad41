#!/usr/bin/env python3
"""Writes the malformed-frame corpus: one .bin file per case, plus MANIFEST.

Run from anywhere: `python3 tests/corpus/gen.py`. Output is deterministic
(the random case uses a fixed seed), so regenerating changes nothing unless
this script changes. Only the standard library is used.

MANIFEST has one line per file, tab-separated:

    FILE    EXPECT    DESCRIPTION

EXPECT is a lowercase fragment the `decode_error` event's `reason` must
contain, or `forwarded` for the one case mongotap passes on instead of
closing: an unknown opcode (counted in mongotap_unknown_opcodes_total,
never fatal). tests/reliability.rs sends each file on its own connection.
"""

import os
import random
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
OP_REPLY, OP_QUERY, OP_COMPRESSED, OP_MSG = 1, 2004, 2012, 2013


def cstring(s):
    return s.encode() + b"\x00"


def element(key, value):
    """One BSON element for the few value types the corpus needs."""
    if isinstance(value, bool):
        return b"\x08" + cstring(key) + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x10" + cstring(key) + struct.pack("<i", value)
    if isinstance(value, str):
        data = value.encode() + b"\x00"
        return b"\x02" + cstring(key) + struct.pack("<i", len(data)) + data
    if isinstance(value, dict):
        return b"\x03" + cstring(key) + document(value)
    raise TypeError(value)


def document(fields):
    body = b"".join(element(k, v) for k, v in fields.items()) + b"\x00"
    return struct.pack("<i", 4 + len(body)) + body


PING = document({"ping": 1, "$db": "admin"})


def header(length, request_id, op_code, response_to=0):
    return struct.pack("<iiii", length, request_id, response_to, op_code)


def frame(op_code, payload, request_id=1):
    return header(16 + len(payload), request_id, op_code) + payload


def op_msg_payload(flags=0, sections=None):
    sections = [b"\x00" + PING] if sections is None else sections
    return struct.pack("<I", flags) + b"".join(sections)


def compressed(original_op, uncompressed_size, compressor_id, data):
    return frame(
        OP_COMPRESSED,
        struct.pack("<iiB", original_op, uncompressed_size, compressor_id) + data,
    )


def cases():
    seq_docs = document({"_id": 1}) + document({"_id": 2})

    yield "len_below_header.bin", header(8, 1, OP_MSG) + b"\x00" * 8, \
        "below the 16-byte header", "messageLength 8: shorter than its own header"
    yield "len_zero.bin", header(0, 1, OP_MSG), \
        "below the 16-byte header", "messageLength 0"
    yield "len_negative.bin", header(-1, 1, OP_MSG) + b"\xff" * 16, \
        "below the 16-byte header", "messageLength -1"
    yield "len_int_min.bin", header(-(2**31), 1, OP_MSG), \
        "below the 16-byte header", "messageLength i32::MIN"
    yield "len_above_max.bin", header(48_000_001, 1, OP_MSG), \
        "exceeds the limit", "messageLength one past 48,000,000"
    yield "len_int_max.bin", header(2**31 - 1, 1, OP_MSG), \
        "exceeds the limit", "messageLength i32::MAX"
    # A legal length whose bytes never come: mongotap grows its buffer as
    # bytes arrive (never 40 MB up front) and reports the truncation at EOF.
    yield "len_large_then_eof.bin", header(40_000_000, 1, OP_MSG) + b"\x00" * 65536, \
        "truncated", "claims 40 MB, sends 64 KiB, then closes"

    # Sections whose sizes run past the end of the frame.
    seq_past_end = b"\x01" + struct.pack("<i", 4096) + cstring("documents") + seq_docs
    yield "section_sequence_past_end.bin", \
        frame(OP_MSG, op_msg_payload(sections=[b"\x00" + PING, seq_past_end])), \
        "document sequence size", "kind-1 section size 4096 in a ~100-byte frame"
    seq_tiny = b"\x01" + struct.pack("<i", 2) + cstring("documents")
    yield "section_sequence_size_small.bin", \
        frame(OP_MSG, op_msg_payload(sections=[b"\x00" + PING, seq_tiny])), \
        "document sequence size", "kind-1 section size 2 (below its own header)"
    body_past_end = bytearray(b"\x00" + PING)
    body_past_end[1:5] = struct.pack("<i", 1 << 20)
    yield "section_body_past_end.bin", frame(OP_MSG, op_msg_payload(sections=[bytes(body_past_end)])), \
        "body is truncated", "kind-0 body claims 1 MiB"
    seq_doc_past_end = bytearray(seq_docs)
    seq_doc_past_end[0:4] = struct.pack("<i", 500)
    seq = cstring("documents") + bytes(seq_doc_past_end)
    seq_section = b"\x01" + struct.pack("<i", 4 + len(seq)) + seq
    yield "section_sequence_doc_past_end.bin", \
        frame(OP_MSG, op_msg_payload(sections=[b"\x00" + PING, seq_section])), \
        "document sequence", "a document inside a kind-1 section claims 500 bytes"
    yield "section_no_body.bin", frame(OP_MSG, op_msg_payload(sections=[])), \
        "body sections, expected exactly one", "OP_MSG with no sections at all"
    yield "section_two_bodies.bin", \
        frame(OP_MSG, op_msg_payload(sections=[b"\x00" + PING, b"\x00" + PING])), \
        "body sections, expected exactly one", "two kind-0 bodies"

    # Invalid BSON inside an otherwise well-framed message.
    bad_type = bytearray(PING)
    bad_type[4] = 0x55  # element type byte of "ping"
    yield "bson_bad_element_type.bin", frame(OP_MSG, op_msg_payload(sections=[b"\x00" + bytes(bad_type)])), \
        "invalid bson", "element type 0x55"
    no_nul = bytearray(PING)
    no_nul[-1] = 0x01  # the document's terminating NUL
    yield "bson_no_terminator.bin", frame(OP_MSG, op_msg_payload(sections=[b"\x00" + bytes(no_nul)])), \
        "invalid bson", "document not terminated by NUL"
    bad_str = bytearray(PING)
    # "$db" string length (offset: 4 len + ping element 1+5+4 = 14, then 1+4 key)
    bad_str[19:23] = struct.pack("<i", 1000)
    yield "bson_string_past_end.bin", frame(OP_MSG, op_msg_payload(sections=[b"\x00" + bytes(bad_str)])), \
        "invalid bson", "string length 1000 inside a small document"
    short_doc = struct.pack("<i", 3) + b"\x00" * 3
    yield "bson_length_below_5.bin", frame(OP_MSG, op_msg_payload(sections=[b"\x00" + short_doc])), \
        "below 5", "document length 3"
    yield "bson_empty_command.bin", frame(OP_MSG, op_msg_payload(sections=[b"\x00" + document({})])), \
        "empty command", "a body with no command name"

    # Flag bits and checksum.
    yield "flags_unknown_required_bit.bin", frame(OP_MSG, op_msg_payload(flags=1 << 3)), \
        "unknown required flag bits", "flag bit 3 (required range 0-15, undefined)"
    yield "flags_unknown_required_bit15.bin", frame(OP_MSG, op_msg_payload(flags=1 << 15)), \
        "unknown required flag bits", "flag bit 15"
    # A CRC-32C that cannot match (the stdlib has no CRC-32C: any constant
    # differs from the real one for this message).
    yield "checksum_mismatch.bin", frame(OP_MSG, struct.pack("<I", 1) + b"\x00" + PING + struct.pack("<I", 0xDEADBEEF)), \
        "checksum mismatch", "checksumPresent with a wrong CRC-32C"
    yield "checksum_missing.bin", frame(OP_MSG, struct.pack("<I", 1) + b"\x00" + PING[:2]), \
        "truncated", "checksumPresent but fewer than 4 bytes after flags"

    # OP_COMPRESSED.
    inner = op_msg_payload()
    z = zlib.compress(inner)
    yield "compressed_zlib_size_too_big.bin", compressed(OP_MSG, len(inner) + 100, 2, z), \
        "uncompressed bytes but zlib produced", "zlib; uncompressedSize 100 more than the data"
    yield "compressed_zlib_size_too_small.bin", compressed(OP_MSG, len(inner) - 10, 2, z), \
        "uncompressed bytes but zlib produced", "zlib; uncompressedSize 10 less than the data"
    yield "compressed_noop_size_wrong.bin", compressed(OP_MSG, len(inner) + 7, 0, inner), \
        "uncompressed bytes but noop produced", "noop; uncompressedSize 7 more than the data"
    yield "compressed_size_negative.bin", compressed(OP_MSG, -5, 2, z), \
        "uncompressedsize -5 is invalid", "uncompressedSize -5"
    yield "compressed_size_huge.bin", compressed(OP_MSG, 2**31 - 1, 2, z), \
        "is invalid (limit", "uncompressedSize i32::MAX (a decompression bomb's claim)"
    yield "compressed_unknown_compressor.bin", compressed(OP_MSG, len(inner), 9, z), \
        "unknown compressor id 9", "compressorId 9"
    yield "compressed_zlib_corrupt.bin", compressed(OP_MSG, len(inner), 2, b"\x78\x9c" + b"\xff" * 40), \
        "zlib data is corrupt", "zlib stream of garbage"
    yield "compressed_nested.bin", compressed(OP_COMPRESSED, len(inner), 0, inner), \
        "cannot be compressed", "originalOpcode is OP_COMPRESSED itself"

    # Legacy opcodes, malformed.
    yield "query_no_cstring_nul.bin", frame(OP_QUERY, struct.pack("<i", 0) + b"admin.$cmd" + b"x" * 20), \
        "cstring", "OP_QUERY fullCollectionName without a NUL"
    yield "query_trailing_bytes.bin", \
        frame(OP_QUERY, struct.pack("<i", 0) + cstring("admin.$cmd") + struct.pack("<ii", 0, -1)
              + document({"isMaster": 1}) + document({}) + b"\x07\x07\x07"), \
        "trailing bytes", "OP_QUERY with 3 bytes after its last document"

    # Random bytes (fixed seed): the first four claim a length mongotap refuses.
    rng = random.Random(20240509)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    yield "random_4k.bin", noise, "messagelength", "4096 random bytes (seed 20240509)"
    rng = random.Random(7)
    yield "random_64k.bin", bytes(rng.getrandbits(8) for _ in range(65536)), \
        "messagelength", "65536 random bytes (seed 7)"

    # Other protocols on the plaintext MongoDB port.
    yield "http_get.bin", b"GET /metrics HTTP/1.1\r\nHost: localhost:27018\r\nUser-Agent: curl/8\r\n\r\n", \
        "http (get)", "an HTTP GET"
    yield "http_post.bin", b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", \
        "http (post)", "an HTTP POST"
    yield "http2_preface.bin", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", \
        "http (pri *)", "the HTTP/2 connection preface"
    yield "tls_client_hello.bin", tls_client_hello(), \
        "tls clienthello", "a TLS 1.2/1.3 ClientHello record"

    # The one case that is not an error: an opcode mongotap does not parse is
    # forwarded as-is and counted. Here, opcode 2099 with an 8-byte body.
    yield "unknown_opcode.bin", frame(2099, b"\x01\x02\x03\x04\x05\x06\x07\x08"), \
        "forwarded", "opcode 2099: forwarded and counted, never fatal"


def tls_client_hello():
    body = b"\x03\x03" + bytes((i * 37) & 0xFF for i in range(32)) + b"\x00"
    body += b"\x00\x02\x13\x01" + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def main():
    names = set()
    lines = []
    for name, data, expect, description in cases():
        assert name not in names, name
        names.add(name)
        assert "\t" not in expect + description
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        lines.append(f"{name}\t{expect}\t{description}\n")
    stale = {n for n in os.listdir(HERE) if n.endswith(".bin")} - names
    for n in stale:
        os.remove(os.path.join(HERE, n))
    with open(os.path.join(HERE, "MANIFEST"), "w") as f:
        f.write("# file\texpected reason fragment (lowercase) or `forwarded`\tcase\n")
        f.writelines(lines)
    print(f"wrote {len(lines)} cases to {HERE}")


if __name__ == "__main__":
    main()
