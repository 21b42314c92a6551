#!/usr/bin/env python3
"""Decode a candump -L log with a DBC using cantools, as an independent
reference for the Go decoder in edge-agent/can (see its tests).

Usage: decode_cantools.py DBC LOG

Prints one JSON object per log line that is a classic CAN frame:
  {"line": N, "ts": "SECONDS.FRACTION", "id": ID, "ext": bool,
   "result": "decoded" | "unknown_id" | "dlc_mismatch" | "error: ...",
   "phys": {SIGNAL: value}, "raw": {SIGNAL: value}}
phys is cantools' decode(scaling=True), raw decode(scaling=False), both
with decode_choices=False. Lines that are not classic data frames are
reported with result "skipped".

Comment statements (CM_) are removed from the DBC before cantools loads it:
real opendbc files contain comments cantools' grammar rejects (e.g.
'CM_ SG_ 304 "...";' without a signal name), and comments never affect
decoding. Value descriptions (VAL_ lines) are removed too: opendbc has some
for signals that do not exist, which cantools refuses, and with
decode_choices=False they are not used. Also removed are messages with a
standard ID above 0x7FF (honda's LKAS_HUD_A/B, IDs 13274/13275, which
cantools refuses and no frame can carry). Nothing else is changed.
"""
import json
import re
import sys

import cantools


def load_dbc(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    text = re.sub(r'^CM_ (?:[^"\n]*)"(?:[^"\\]|\\.)*"\s*;', "", text, flags=re.M)
    text = re.sub(r"^VAL_ .*$", "", text, flags=re.M)
    text = re.sub(r"^BO_ (\d+) .*\n(?:[ \t]+SG_ .*\n)*", drop_bad_id, text, flags=re.M)
    return cantools.database.load_string(text, database_format="dbc", strict=False)


def drop_bad_id(m):
    """Removes a message whose standard ID has more than 11 bits."""
    fid = int(m.group(1))
    return "" if fid < 0x80000000 and fid > 0x7FF else m.group(0)


LINE = re.compile(r"^\((\d+)\.(\d+)\)\s+(\S+)\s+([0-9A-Fa-f]{3}|[0-9A-Fa-f]{8})#([0-9A-Fa-f]*)(?:\s+[RT])?\s*$")


def main():
    db = load_dbc(sys.argv[1])
    by_id = {}
    for m in db.messages:
        by_id[(m.frame_id, bool(m.is_extended_frame))] = m
    out = sys.stdout
    with open(sys.argv[2], encoding="ascii", errors="replace") as f:
        for n, line in enumerate(f, 1):
            mt = LINE.match(line)
            if not mt or len(mt.group(5)) % 2:
                out.write(json.dumps({"line": n, "result": "skipped"}) + "\n")
                continue
            sec, frac, _, ident, data = mt.groups()
            ext = len(ident) == 8
            fid = int(ident, 16)
            rec = {"line": n, "ts": sec + "." + frac, "id": fid, "ext": ext}
            payload = bytes.fromhex(data)
            msg = by_id.get((fid, ext))
            if msg is None:
                rec["result"] = "unknown_id"
            elif len(payload) != msg.length:
                rec["result"] = "dlc_mismatch"
            else:
                try:
                    rec["phys"] = msg.decode(payload, decode_choices=False, scaling=True)
                    rec["raw"] = msg.decode(payload, decode_choices=False, scaling=False)
                    rec["result"] = "decoded"
                except Exception as e:  # noqa: BLE001 - reported, compared by the test
                    rec["result"] = "error: " + str(e)
            out.write(json.dumps(rec, allow_nan=True) + "\n")


if __name__ == "__main__":
    main()
