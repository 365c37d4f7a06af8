"""The columnar wire form, read and written in C: BidRequest.columns in, BidResponse.columns out.

The decode and encode stages of a columnar batch, without protobuf objects.
`read_columns` walks the protobuf wire format of a BidRequest once. It turns each
string column into a list of str and each number column into an int64 array. An
event message costs about 2 us to decode in Python; here an event costs well
under 1 us, whatever its fields.

It takes only the common case. It gives up with None for anything else, and the
caller then parses with protobuf, which handles the rest and explains problems:
a per-event request, an empty one, a repeated `columns` field, invalid UTF-8,
a malformed message. So these paths never have to agree on error messages.

`write_columns` writes a BidResponse with DecisionColumns as bytes. It gives the
same message as adbid.encode.encode_columns builds with protobuf.
tests/test_wire.py compares both functions with protobuf on random batches.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

import numpy as np

# The field numbers this codec reads and writes, one enum per message. FIELDS below is built
# from the same constants; tests/test_wire.py checks it against the protobuf descriptors, so
# a field added to the proto fails the tests until this codec knows it.
cdef enum:
    REQ_BATCH_ID = 1
    REQ_EVENTS = 2
    REQ_DEADLINE_MS = 3
    REQ_COLUMNS = 4
cdef enum:
    RESP_BATCH_ID = 1
    RESP_DECISIONS = 2
    RESP_WORLD_VERSION = 3
    RESP_SERVER_LATENCY_US = 4
    RESP_COLUMNS = 5
cdef enum:
    DEC_REQUEST_ID = 1
    DEC_BID = 2
    DEC_PRICE_CPM_MICROS = 3
    DEC_CAMPAIGN_ID = 4
    DEC_CREATIVE_ID = 5
    DEC_SCORE = 6
    DEC_NO_BID_REASON = 7
    DEC_ERROR = 8
    DEC_VALUE_CPM_MICROS = 9

# EventColumns field number -> column name; strings and numbers (varints).
STRING_FIELDS = {1: "request_id", 2: "user_id", 3: "context_text", 6: "country",
                 10: "site_domain", 13: "blocked_advertiser_domains", 15: "blocked_categories"}
NUMBER_FIELDS = {4: "timestamp_ms", 5: "floor_cpm_micros", 7: "device_type", 8: "slot_width_px",
                 9: "slot_height_px", 11: "auction_type", 12: "test",
                 14: "blocked_advertiser_domains_count", 16: "blocked_categories_count"}
cdef enum:
    N_FIELDS = 17  # field numbers 1..16
# 1: string column, 2: number column, 0: unknown (skipped).
cdef int KIND[N_FIELDS]
KIND[:] = [0, 1, 1, 1, 2, 2, 1, 2, 2, 2, 1, 2, 2, 1, 2, 1, 2]
# How a number column's varint converts, as protobuf converts it: 64 = int64, 32 = int32 or
# enum (truncated to 32 bits, sign kept), 33 = uint32, 1 = bool.
cdef int WIDTH[N_FIELDS]
WIDTH[:] = [0, 0, 0, 0, 64, 64, 0, 32, 32, 32, 0, 32, 1, 0, 33, 0, 33]


FIELDS = {
    "BidRequest": {"batch_id": REQ_BATCH_ID, "events": REQ_EVENTS,
                   "deadline_ms": REQ_DEADLINE_MS, "columns": REQ_COLUMNS},
    "BidResponse": {"batch_id": RESP_BATCH_ID, "decisions": RESP_DECISIONS,
                    "world_version": RESP_WORLD_VERSION,
                    "server_latency_us": RESP_SERVER_LATENCY_US, "columns": RESP_COLUMNS},
    "DecisionColumns": {"request_id": DEC_REQUEST_ID, "bid": DEC_BID,
                        "price_cpm_micros": DEC_PRICE_CPM_MICROS, "campaign_id": DEC_CAMPAIGN_ID,
                        "creative_id": DEC_CREATIVE_ID, "score": DEC_SCORE,
                        "no_bid_reason": DEC_NO_BID_REASON, "error": DEC_ERROR,
                        "value_cpm_micros": DEC_VALUE_CPM_MICROS},
    "EventColumns": {name: number for number, name in (*STRING_FIELDS.items(),
                                                       *NUMBER_FIELDS.items())},
}


def column_kinds():
    """(kind, width) per EventColumns field number 0..N-1, as the reader uses them: kind 1
    string, 2 number, 0 skipped; width 64 int64, 32 int32/enum, 33 uint32, 1 bool."""
    return [(KIND[i], WIDTH[i]) for i in range(N_FIELDS)]


cdef inline int64_t convert(uint64_t v, int width) noexcept nogil:
    if width == 32:
        return <int64_t><int32_t>v
    if width == 33:
        return <int64_t><uint32_t>v
    if width == 1:
        return v != 0
    return <int64_t>v


cdef inline bint varint(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end,
                        uint64_t* out) noexcept nogil:
    """Read one base-128 varint at pos; False if it runs past end or past 10 bytes."""
    cdef uint64_t v = 0
    cdef int shift = 0
    cdef uint8_t b
    while pos[0] < end and shift < 70:
        b = buf[pos[0]]
        pos[0] += 1
        v |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = v
            return True
        shift += 7
    return False


cdef inline bint skip(const uint8_t* buf, Py_ssize_t* pos, Py_ssize_t end,
                      int wire_type) noexcept nogil:
    """Step over an unknown field's value; False for groups or a value past end."""
    cdef uint64_t v
    if wire_type == 0:
        return varint(buf, pos, end, &v)
    if wire_type == 1:
        pos[0] += 8
    elif wire_type == 5:
        pos[0] += 4
    elif wire_type == 2:
        if not varint(buf, pos, end, &v) or v > <uint64_t>(end - pos[0]):
            return False
        pos[0] += <Py_ssize_t>v
    else:
        return False
    return pos[0] <= end


cdef bint walk_columns(const uint8_t* buf, Py_ssize_t start, Py_ssize_t end,
                       Py_ssize_t* counts, int64_t** numbers, Py_ssize_t* str_base,
                       Py_ssize_t* str_off, Py_ssize_t* str_len) noexcept nogil:
    """One pass over an EventColumns message. With numbers NULL, only counts entries per field;
    otherwise also stores number i of a field at numbers[field][i], and the offset and
    length of string i of a field at str_off/str_len[str_base[field] + i]. False: malformed."""
    cdef Py_ssize_t pos = start, stop, fill[N_FIELDS], at
    cdef uint64_t key, v, length
    cdef int field, wire_type, kind, i
    for i in range(N_FIELDS):
        fill[i] = 0
    while pos < end:
        if not varint(buf, &pos, end, &key):
            return False
        field = <int>(key >> 3) if key >> 3 < N_FIELDS else 0
        wire_type = <int>(key & 7)
        kind = KIND[field]
        if kind == 0:
            if not skip(buf, &pos, end, wire_type):
                return False
        elif kind == 1:
            if wire_type != 2 or not varint(buf, &pos, end, &length) \
                    or length > <uint64_t>(end - pos):
                return False
            if numbers != NULL:
                at = str_base[field] + fill[field]
                str_off[at] = pos
                str_len[at] = <Py_ssize_t>length
            fill[field] += 1
            pos += <Py_ssize_t>length
        elif wire_type == 0:  # one number, unpacked
            if not varint(buf, &pos, end, &v):
                return False
            if numbers != NULL:
                numbers[field][fill[field]] = convert(v, WIDTH[field])
            fill[field] += 1
        elif wire_type == 2:  # packed numbers
            if not varint(buf, &pos, end, &length) or length > <uint64_t>(end - pos):
                return False
            stop = pos + <Py_ssize_t>length
            while pos < stop:
                if not varint(buf, &pos, stop, &v):
                    return False
                if numbers != NULL:
                    numbers[field][fill[field]] = convert(v, WIDTH[field])
                fill[field] += 1
        else:
            return False
    if numbers == NULL:
        for i in range(N_FIELDS):
            counts[i] = fill[i]
    return pos == end


cdef object text(const uint8_t* buf, Py_ssize_t off, Py_ssize_t length):
    """A str from UTF-8 bytes, or None where they are not valid UTF-8."""
    try:
        return PyUnicode_DecodeUTF8(<char*>buf + off, length, NULL)
    except UnicodeDecodeError:
        return None


def read_columns(bytes raw):
    """(batch_id, deadline_ms, columns, longest) of a columnar BidRequest, or None (see the
    module doc).

    `columns` maps each column the request filled to a list of str (string columns) or an
    int64 array (the others, with protobuf's conversions: bools 0/1, int32 and enums
    truncated and sign-extended, uint32 counts). Empty columns are absent. Column lengths
    are not checked against each other. `longest` maps each string column to its longest
    entry in UTF-8 bytes (at least its length in characters), so that length limits need
    no pass over the strings when nothing comes near them.
    """
    cdef const uint8_t* buf = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw), pos = 0, cols_at = -1, cols_end = 0
    cdef uint64_t key, v, length
    cdef int field, wire_type, i
    cdef int64_t deadline_ms = 0
    batch_id = ""
    while pos < end:
        if not varint(buf, &pos, end, &key):
            return None
        field, wire_type = <int>(key >> 3), <int>(key & 7)
        if field == REQ_EVENTS:  # the per-event form
            return None
        if field == REQ_BATCH_ID or field == REQ_COLUMNS:
            if wire_type != 2 or not varint(buf, &pos, end, &length) \
                    or length > <uint64_t>(end - pos):
                return None
            if field == REQ_BATCH_ID:
                batch_id = text(buf, pos, <Py_ssize_t>length)
                if batch_id is None:
                    return None
            elif cols_at >= 0:  # columns sent in pieces: protobuf merges them
                return None
            else:
                cols_at, cols_end = pos, pos + <Py_ssize_t>length
            pos += <Py_ssize_t>length
        elif field == REQ_DEADLINE_MS and wire_type == 0:
            if not varint(buf, &pos, end, &v):
                return None
            deadline_ms = <int64_t>v
        elif not skip(buf, &pos, end, wire_type):
            return None
    if cols_at < 0:
        return None

    cdef Py_ssize_t counts[N_FIELDS]
    cdef Py_ssize_t str_base[N_FIELDS]
    cdef Py_ssize_t n_strings = 0
    if not walk_columns(buf, cols_at, cols_end, counts, NULL, NULL, NULL, NULL):
        return None
    if counts[1] == 0:
        return None
    columns = {}
    cdef int64_t* numbers[N_FIELDS]
    cdef int64_t[::1] view
    for i in range(N_FIELDS):
        numbers[i] = NULL
        str_base[i] = n_strings
        if KIND[i] == 1:
            n_strings += counts[i]
        elif KIND[i] == 2 and counts[i]:
            arr = np.empty(counts[i], dtype=np.int64)
            view = arr
            numbers[i] = &view[0]
            columns[NUMBER_FIELDS[i]] = arr
    cdef Py_ssize_t* str_off = <Py_ssize_t*>malloc(2 * max(n_strings, 1) * sizeof(Py_ssize_t))
    if str_off == NULL:
        raise MemoryError()
    cdef Py_ssize_t* str_len = str_off + max(n_strings, 1)
    cdef Py_ssize_t j, at, most
    cdef list values
    longest = {}
    try:
        if not walk_columns(buf, cols_at, cols_end, counts, numbers, str_base, str_off,
                            str_len):
            return None
        for i in range(N_FIELDS):
            if KIND[i] != 1 or counts[i] == 0:
                continue
            values = [None] * counts[i]
            most = 0
            for j in range(counts[i]):
                at = str_base[i] + j
                s = text(buf, str_off[at], str_len[at])
                if s is None:
                    return None
                values[j] = s
                if str_len[at] > most:
                    most = str_len[at]
            columns[STRING_FIELDS[i]] = values
            longest[STRING_FIELDS[i]] = most
    finally:
        free(str_off)
    return batch_id, deadline_ms, columns, longest


# -- writing ----------------------------------------------------------------------

cdef struct Out:
    uint8_t* buf
    Py_ssize_t len
    Py_ssize_t cap


cdef int grow(Out* o, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = o.cap * 2 if o.cap else 4096
    cdef uint8_t* bigger
    while cap < o.len + extra:
        cap *= 2
    bigger = <uint8_t*>malloc(cap)
    if bigger == NULL:
        raise MemoryError()
    if o.len:
        memcpy(bigger, o.buf, o.len)
    free(o.buf)
    o.buf, o.cap = bigger, cap
    return 0


cdef inline int put_varint(Out* o, uint64_t v) except -1:
    if o.len + 10 > o.cap:
        grow(o, 10)
    while v >= 0x80:
        o.buf[o.len] = <uint8_t>(v & 0x7F) | 0x80
        o.len += 1
        v >>= 7
    o.buf[o.len] = <uint8_t>v
    o.len += 1
    return 0


cdef inline int put_bytes(Out* o, const char* data, Py_ssize_t n) except -1:
    if o.len + n > o.cap:
        grow(o, n)
    memcpy(o.buf + o.len, data, n)
    o.len += n
    return 0


cdef inline Py_ssize_t varint_size(uint64_t v) noexcept nogil:
    cdef Py_ssize_t n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


cdef int put_string(Out* o, int field, str s) except -1:
    """A length-delimited string field (written even when empty: repeated entries count)."""
    cdef Py_ssize_t n
    cdef const char* data = PyUnicode_AsUTF8AndSize(s, &n)  # cached in the str: no copy
    put_varint(o, (<uint64_t>field << 3) | 2)
    put_varint(o, n)
    put_bytes(o, data, n)
    return 0


cdef int put_packed(Out* o, int field, const int64_t[::1] values) except -1:
    """A packed repeated varint field (int64, bool and enum columns alike)."""
    cdef Py_ssize_t i, size = 0, n = values.shape[0]
    if n == 0:
        return 0
    for i in range(n):
        size += varint_size(<uint64_t>values[i])
    put_varint(o, (<uint64_t>field << 3) | 2)
    put_varint(o, size)
    for i in range(n):
        put_varint(o, <uint64_t>values[i])
    return 0


def write_columns(str batch_id, list request_ids, const int64_t[::1] bid,
                  const int64_t[::1] price, list campaign_ids, list creative_ids,
                  const float[::1] score, const int64_t[::1] reason,
                  const int64_t[::1] value, dict errors, str world_version):
    """A serialized BidResponse: batch_id, DecisionColumns, world_version.

    Every column has one entry per event. `errors` maps an event position to its error
    (the DecisionColumns.error map). server_latency_us is left out: append it with
    `latency_field` once it is known.
    """
    cdef Py_ssize_t n = len(request_ids), i
    if not (bid.shape[0] == price.shape[0] == score.shape[0] == reason.shape[0]
            == value.shape[0] == len(campaign_ids) == len(creative_ids) == n):
        raise ValueError(f"write_columns: columns of unequal length for {n} events")
    cdef Out body, out
    body.buf, body.len, body.cap = NULL, 0, 0
    out.buf, out.len, out.cap = NULL, 0, 0
    try:
        for i in range(n):
            put_string(&body, DEC_REQUEST_ID, request_ids[i])
        put_packed(&body, DEC_BID, bid)
        put_packed(&body, DEC_PRICE_CPM_MICROS, price)
        for i in range(n):
            put_string(&body, DEC_CAMPAIGN_ID, campaign_ids[i])
        for i in range(n):
            put_string(&body, DEC_CREATIVE_ID, creative_ids[i])
        if n:
            put_varint(&body, (DEC_SCORE << 3) | 2)
            put_varint(&body, 4 * n)
            put_bytes(&body, <const char*>&score[0], 4 * n)  # little-endian floats (x86, ARM)
        put_packed(&body, DEC_NO_BID_REASON, reason)
        for position in sorted(errors):
            entry = errors[position]
            b = entry.encode("utf-8")
            put_varint(&body, (DEC_ERROR << 3) | 2)
            put_varint(&body, 1 + varint_size(<uint32_t>position) + 1
                       + varint_size(len(b)) + len(b))
            put_varint(&body, (1 << 3) | 0)
            put_varint(&body, <uint32_t>position)
            put_string(&body, 2, entry)
        put_packed(&body, DEC_VALUE_CPM_MICROS, value)
        if batch_id:
            put_string(&out, RESP_BATCH_ID, batch_id)
        put_varint(&out, (RESP_COLUMNS << 3) | 2)
        put_varint(&out, body.len)
        if body.len:
            put_bytes(&out, <const char*>body.buf, body.len)
        if world_version:
            put_string(&out, RESP_WORLD_VERSION, world_version)
        return PyBytes_FromStringAndSize(<const char*>out.buf, out.len)
    finally:
        free(body.buf)
        free(out.buf)


def latency_field(int64_t server_latency_us):
    """BidResponse.server_latency_us as serialized bytes, to append to a written response
    (a later field in the bytes is as good as one written in order)."""
    cdef Out o
    o.buf, o.len, o.cap = NULL, 0, 0
    try:
        if server_latency_us:
            put_varint(&o, (RESP_SERVER_LATENCY_US << 3) | 0)
            put_varint(&o, <uint64_t>server_latency_us)
        return PyBytes_FromStringAndSize(<const char*>o.buf, o.len)
    finally:
        free(o.buf)
