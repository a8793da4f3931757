#!/usr/bin/env python3
"""Check a Switchyard checkpoint with nothing but the safetensors spec.

    python3 scripts/check_checkpoint.py CHECKPOINT_DIR [--quiet]

CHECKPOINT_DIR holds manifest.pbtxt (text-format CheckpointManifest,
configs/switchyard.proto) and the safetensors files it lists. For every file
this opens the file, reads the 8-byte little-endian header length and the
JSON header (struct and json), and checks against the manifest: every tensor
by name, its dtype, shape and byte range, that the ranges tile the data
region, the file's size, and the CRC-32s (zlib's) of each tensor and of the
whole file; then that the expert parameters cover every expert index once.
Exits 0 when all holds, else 1 with one line per problem naming the file and
the tensor. Standard library only.
"""
import json
import mmap
import os
import re
import struct
import sys
import zlib

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}

TOKEN = re.compile(r'\s*(?:(#[^\n]*)|([A-Za-z_][A-Za-z0-9_]*)\s*:?\s*(\{)|([A-Za-z_][A-Za-z0-9_]*)\s*:\s*'
                   r'("(?:[^"\\]|\\.)*"|[^\s{}]+)|(\}))')


def parse_text_proto(text):
    """A loose reader of protobuf text format: {field: [values]}, messages as dicts."""
    root, stack, pos = {}, [], 0
    cur = root
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = TOKEN.match(text, pos)
        if not m:
            raise ValueError(f"cannot parse manifest near: {text[pos:pos + 40]!r}")
        pos = m.end()
        comment, msg_name, _, field, value, close = m.groups()
        if comment:
            continue
        if msg_name:
            child = {}
            cur.setdefault(msg_name, []).append(child)
            stack.append(cur)
            cur = child
        elif field:
            if value.startswith('"'):
                value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
            cur.setdefault(field, []).append(value)
        elif close:
            if not stack:
                raise ValueError("a '}' closes no message")
            cur = stack.pop()
    if stack:
        raise ValueError(f"{len(stack)} message(s) not closed: the file ends early")
    return root


def header_problem(header):
    """Why a safetensors header (parsed JSON) is malformed, or None."""
    if not isinstance(header, dict):
        return f"header is a JSON {type(header).__name__}, not an object"
    for tname, h in header.items():
        if tname == "__metadata__":
            continue
        if not isinstance(h, dict):
            return f"tensor {tname}: its header entry is not an object"
        dtype, shape, offsets = h.get("dtype"), h.get("shape"), h.get("data_offsets")
        if not isinstance(dtype, str):
            return f"tensor {tname}: no dtype"
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            return f"tensor {tname}: shape {shape!r} is not a list of sizes"
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            return f"tensor {tname}: data_offsets {offsets!r} is not [begin, end]"
    return None


def one(msg, field, default=None):
    v = msg.get(field)
    return v[0] if v else default


def check_file(directory, f, problems):
    name = one(f, "name")
    if name is None:
        problems.append(f"{os.path.join(directory, 'manifest.pbtxt')}: a files entry without a name")
        return None
    path = os.path.join(directory, name)
    say = lambda tensor, what: problems.append(f"{path}: tensor {tensor}: {what}" if tensor else f"{path}: {what}")
    if not os.path.isfile(path):
        say(None, "missing (the manifest lists it)")
        return
    size = os.path.getsize(path)
    if size < 8:
        say(None, f"truncated: {size} bytes")
        return
    # Mapped, not read: a large model's expert files run to tens of GB, and
    # the CRCs read each byte once through the page cache.
    with open(path, "rb") as fh:
        data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(data)
    (n,) = struct.unpack("<Q", data[:8])
    if 8 + n > len(data):
        say(None, f"truncated: header of {n} bytes in a file of {len(data)}")
        return
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        say(None, "header is not JSON")
        return
    why = header_problem(header)
    if why:
        say(None, why)
        return
    header.pop("__metadata__", None)
    body = len(data) - 8 - n
    listed = {one(t, "name"): t for t in f.get("tensors", [])}
    for tname in header:
        if tname not in listed:
            say(tname, "in the file but not in the manifest")
    spans = []
    for tname, t in listed.items():
        h = header.get(tname)
        if h is None:
            say(tname, "missing from the file (the manifest lists it)")
            continue
        dtype, shape = one(t, "dtype"), [int(s) for s in t.get("shape", [])]
        begin, end = int(one(t, "begin", 0)), int(one(t, "end", 0))
        if h["dtype"] != dtype:
            say(tname, f"dtype {h['dtype']} in the file, {dtype} in the manifest")
        if h["shape"] != shape:
            say(tname, f"shape {h['shape']} in the file, {shape} in the manifest")
        if h["data_offsets"] != [begin, end]:
            say(tname, f"bytes {h['data_offsets']} in the file, [{begin}, {end}] in the manifest")
        count = 1
        for s in h["shape"]:
            count *= s
        b, e = h["data_offsets"]
        if e - b != count * DTYPE_BYTES.get(h["dtype"], 0):
            say(tname, f"byte range {b}..{e} does not hold {h['dtype']} {h['shape']}")
        if e > body:
            say(tname, f"byte range ends at {e}, past the data ({body} bytes): truncated")
            continue
        spans.append((b, e, tname))
        crc = zlib.crc32(view[8 + n + b:8 + n + e])
        if one(t, "crc32") is not None and crc != int(one(t, "crc32")):
            say(tname, f"CRC-32 {crc:08x}, the manifest says {int(one(t, 'crc32')):08x}")
    at = 0
    for b, e, tname in sorted(spans):
        if b != at:
            say(tname, f"starts at byte {b}, expected {at} (hole or overlap)")
        at = e
    if int(one(f, "bytes", -1)) != len(data):
        say(None, f"{len(data)} bytes, the manifest says {one(f, 'bytes')}")
    whole = zlib.crc32(view)
    if int(one(f, "crc32", -1)) != whole:
        say(None, f"CRC-32 {whole:08x}, the manifest says {int(one(f, 'crc32', 0)):08x}")
    return listed


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    directory = argv[1]
    quiet = "--quiet" in argv
    manifest_path = os.path.join(directory, "manifest.pbtxt")
    if not os.path.isfile(manifest_path):
        print(f"{manifest_path}: missing")
        return 1
    try:
        m = parse_text_proto(open(manifest_path, encoding="utf-8", errors="replace").read())
    except ValueError as e:
        print(f"{manifest_path}: cannot parse: {e}")
        return 1
    problems, tensors, files = [], {}, m.get("files", [])
    for field in ("format_version", "step"):
        if one(m, field) is None:
            problems.append(f"{manifest_path}: no {field} (not a whole checkpoint manifest)")
    if not files:
        problems.append(f"{manifest_path}: lists no files")
    for f in files:
        tensors.update(check_file(directory, f, problems) or {})
    # A weight file on disk that the manifest does not list (a manifest cut
    # short loses its last entries and still parses).
    listed_names = {one(f, "name") for f in files}
    for entry in sorted(os.listdir(directory)):
        if entry.endswith(".safetensors") and entry not in listed_names:
            problems.append(f"{os.path.join(directory, entry)}: on disk but not in the manifest")
    # Expert parameters: rows e0..e(G-1) of each, whatever the files' split.
    experts = int(one(one(one(m, "config", {}), "moe", {}), "num_experts", 0))
    rows = {}
    for tname in tensors:
        hit = re.fullmatch(r"(.+\.experts\.[^.]+)\.e(\d+)", tname)
        if hit:
            rows.setdefault(hit.group(1), set()).add(int(hit.group(2)))
    for param, got in sorted(rows.items()):
        if got != set(range(experts)):
            problems.append(f"{manifest_path}: tensor {param}: expert rows {sorted(got)}, expected 0..{experts - 1}")
    for p in problems:
        print(p)
    if not problems and not quiet:
        total = sum(int(one(f, "bytes", 0)) for f in files)
        print(f"{directory}: step {one(m, 'step')}, {len(files)} files, {len(tensors)} tensors, {total} bytes: "
              f"names, dtypes, shapes, byte ranges and CRC-32s match the manifest")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
