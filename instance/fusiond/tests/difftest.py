#!/usr/bin/env python3
"""Differential tester: fusiond against redis-server, reply for reply.

Sends the same seeded command sequences (hand-written edge cases first, then random ones)
to a fresh `redis-server` and to one fusiond instance, over raw sockets in RESP2 and in
RESP3, and compares every reply exactly: reply type and bytes, error text word for word.
It is a manual tool (not run by CI): it starts both servers itself on loopback ports
17500..17599 and needs `redis-server` and a release build (`cargo build --release -p
fusiond`).

    python3 instance/fusiond/tests/difftest.py [--seeds N] [--steps N] [--seed S] [-v]
        [--fusiond PATH]

DIFFTEST_LOGS=1 prints both servers' logs at the end.

Exit status 0 when every reply matched. Each difference is printed with the commands that
led to it (the case's or seed's history), so a failing seed replays with `--seed S`.

Compared loosely, and why:
  * `KEYS`, `HKEYS`, `HVALS`, `HGETALL` (RESP2 array of pairs, RESP3 map), `EXEC` elements
    of those: as sets (both servers may order them any way).
  * `SCAN`: cursors differ by design, so the generator runs a whole iteration (`SCANALL`,
    a pseudo-command: SCAN from 0 until 0 with the step's MATCH/COUNT) and compares the
    union of keys; the first page's shape (two-element array, bulk cursor) is compared too.
  * `TTL`/`PTTL`: a positive answer within 2 s (PTTL) / 2 (TTL) of Redis's.
Raw exchanges: `HELLO`'s `server`, `version`, `id` and `mode` (fusiond says
`cluster-of-equals`) are blanked; a bulk string not followed by CRLF is not sent (Redis
skips two bytes whatever they are; fusiond closes the connection with a protocol error).
Nor are these malformed requests (no client library sends them): a count or length line
over 32 bytes (fusiond refuses it at once with `too big mbulk count string`; Redis waits
for its CRLF up to 64 KiB, then says `invalid (multi)bulk length` or `too big bulk count
string`), and Redis's limits for clients not yet authenticated (`*` over 10, `$` over
16384: `unauthenticated multibulk/bulk length`), which fusiond does not apply.
Not compared (not generated): `INFO`, `CLIENT ID/LIST`, `COMMAND` (COUNT, INFO), `TIME`,
`RANDOMKEY` (they describe the server, not the data); `CONFIG GET` of settings whose values
are configuration (`maxclients`, `timeout`, `appendonly`) or that fusiond does not have;
commands fusiond does not implement (README lists those it does); keys that expire during
the run (no expiry shorter than 100 s is set, except 0/negative, which delete at once);
fusiond's documented departures (README "Deploy"): `KEYS`/`SCAN`/`DBSIZE`, `HELLO` and
`AUTH` inside `MULTI`, and a SCAN cursor fusiond did not hand out (`SCAN -1`, `SCAN
18446744073709551615`: Redis goes on from that point of its table, fusiond starts over);
values and keys past fusiond's limits (value 256 KiB, key 1 KiB, 1,024 keys per
transaction: SETRANGE past them is only sent with offsets Redis refuses too, past 512 MB).
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PORT_REDIS = 17500
PORT_FUSION_IC = 17501
PORT_FUSION_RESP = 17502


# ---------------------------------------------------------------- RESP over a raw socket

class Conn:
    def __init__(self, port, proto):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.proto = proto
        if proto == 3:
            r = self.call([b"HELLO", b"3"])
            assert r[0] == "map", r

    def send(self, args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))

    def call(self, args):
        self.send(args)
        return self.read()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _bytes(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return ("simple", rest)
        if t == b"-":
            return ("err", rest)
        if t == b":":
            return ("int", int(rest))
        if t == b"$":
            n = int(rest)
            return ("null2",) if n < 0 else ("bulk", self._bytes(n))
        if t == b"*":
            n = int(rest)
            return ("nullarr",) if n < 0 else ("arr", [self.read() for _ in range(n)])
        if t == b"_":
            return ("null",)
        if t == b",":
            return ("double", rest)
        if t == b"#":
            return ("bool", rest)
        if t == b"(":
            return ("bignum", rest)
        if t == b"=":
            return ("verbatim", self._bytes(int(rest)))
        if t == b"!":
            return ("bloberr", self._bytes(int(rest)))
        if t == b"%":
            n = int(rest)
            return ("map", [(self.read(), self.read()) for _ in range(n)])
        if t == b"~":
            return ("set", [self.read() for _ in range(int(rest))])
        if t == b">":
            return ("push", [self.read() for _ in range(int(rest))])
        if t == b"|":
            for _ in range(int(rest)):
                self.read()
                self.read()
            return self.read()
        raise ValueError("bad reply line %r" % line)

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- servers

def wait_port(port, proc, what):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("%s exited with %s" % (what, proc.returncode))
        try:
            c = Conn(port, 2)
            if c.call([b"PING"])[0] in ("simple", "err"):
                c.close()
                return
            c.close()
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("%s did not answer on port %d" % (what, port))


def start_redis(tmp, password=None):
    d = os.path.join(tmp, "redis" if password is None else "redis-pass")
    os.mkdir(d)
    extra = [] if password is None else ["--requirepass", password]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(PORT_REDIS), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", d] + extra,
        stdout=open(os.path.join(d, "log"), "w"), stderr=subprocess.STDOUT)
    wait_port(PORT_REDIS, proc, "redis-server")
    return proc


FUSIOND = os.path.join(ROOT, "target", "release", "fusiond")


def start_fusiond(tmp, password=None):
    d = os.path.join(tmp, "fusion" if password is None else "fusion-pass")
    os.mkdir(d)
    rel = os.path.join(ROOT, "target", "release")
    storage = os.path.join(d, "cluster.fusion")
    subprocess.run([os.path.join(rel, "fusionctl"), "create", "--path", storage,
                    "--cluster-id", "1", "--instances", "1", "--size", "256MiB",
                    "--redo-size", "32MiB"], check=True, stdout=subprocess.DEVNULL)
    config = os.path.join(d, "fusion.toml")
    with open(config, "w") as f:
        f.write(
            'instance = 0\n\n[cluster]\nid = 1\n'
            'secret = "difftest-secret-for-loopback-only-0123456789"\n'
            'allow_inline_secret = true\ninstances = [\n'
            '  { id = 0, address = "127.0.0.1:%d", host = "localhost", resp = "127.0.0.1:%d" },\n'
            ']\n\n[storage]\npath = "%s"\n\n[serve]\nresp = "127.0.0.1:%d"\n%s'
            % (PORT_FUSION_IC, PORT_FUSION_RESP, storage, PORT_FUSION_RESP,
               "" if password is None else 'requirepass = "%s"\n' % password))
    proc = subprocess.Popen([FUSIOND, "--config", config],
                            stdout=open(os.path.join(d, "log"), "w"), stderr=subprocess.STDOUT)
    proc.stdout_path = os.path.join(d, "log")
    wait_port(PORT_FUSION_RESP, proc, "fusiond")
    return proc


# ---------------------------------------------------------------- normalising replies

UNORDERED = {b"KEYS", b"HKEYS", b"HVALS", b"HGETALL"}


def sort_key(r):
    return repr(r)


def normal(cmd, r):
    """The reply as compared: unordered replies sorted, positive TTLs bucketed."""
    name = cmd[0].upper() if cmd else b""
    if isinstance(name, str):
        name = name.encode()
    if r[0] == "err":
        return r
    if name in UNORDERED or (name == b"COMMAND" and len(cmd) > 1 and cmd[1].upper() == b"LIST"):
        if r[0] == "map":
            return ("map", sorted(r[1], key=sort_key))
        if r[0] == "arr" and name == b"HGETALL":
            pairs = [(r[1][i], r[1][i + 1]) for i in range(0, len(r[1]) - 1, 2)]
            return ("arr-pairs", sorted(pairs, key=sort_key))
        if r[0] in ("arr", "set"):
            return (r[0], sorted(r[1], key=sort_key))
    if name == b"SCAN" and r[0] == "arr" and len(r[1]) == 2:
        # Cursors and page sizes differ by design: only the page's shape (see SCANALL).
        return ("scanpage", r[1][0][0], r[1][1][0])
    if name == b"EXEC" and r[0] == "arr":
        return r  # elements are normalised by the caller, who knows the queued commands
    return r


def ttl_close(cmd, a, b):
    name = cmd[0].upper()
    if isinstance(name, str):
        name = name.encode()
    if name not in (b"TTL", b"PTTL") or a[0] != "int" or b[0] != "int":
        return False
    if a[1] < 0 or b[1] < 0:
        return False
    tol = 2 if name == b"TTL" else 2000
    return abs(a[1] - b[1]) <= tol


def same(cmd, a, b):
    return normal(cmd, a) == normal(cmd, b) or ttl_close(cmd, a, b)


# ---------------------------------------------------------------- commands

KEYS = [b"k0", b"k1", b"k2", b"h0", b"h1", b"a\r\nb", b"\x00nul", b"", b"key*", b"k[1]"]
VALUES = [b"", b"0", b"1", b"-1", b"abc", b"a\r\nb\x00c", b"9223372036854775807",
          b"-9223372036854775808", b"9223372036854775808", b" 1", b"1 ", b"3.0", b"007",
          b"+1", b"-0", b"x" * 100, b"\xff\xfe"]
INTS = [b"0", b"1", b"-1", b"10", b"-10", b"100", b"9223372036854775807",
        b"-9223372036854775808", b"9223372036854775808", b"abc", b"", b"1.5", b" 1", b"0x10",
        b"+5", b"-0", b"01"]
EXPIRES = [b"100", b"1000", b"0", b"-1", b"-100", b"+100", b"0100", b"1e3", b" 100", b"9223372036854775807",
           b"-9223372036854775808", b"9223372036854775", b"9223372036854776", b"abc", b"1.5",
           b"", b"4611686018427387", b"922337203685477"]
OFFSETS = [b"0", b"1", b"3", b"-1", b"-3", b"-100", b"100", b"2147483647", b"-2147483648",
           b"9223372036854775807", b"abc", b"536870911", b"536870912", b"4294967296"]
FIELDS = [b"f1", b"f2", b"", b"f\r\n", b"f\x00"]
PATTERNS = [b"*", b"k*", b"k?", b"k[0-1]", b"k[^0]", b"k[!0]", b"*\\**", b"key\\*",
            b"k\\[1\\]", b"[a-c]*", b"[c-a]*", b"h*", b"\\", b"*[", b"[", b"k[]", b"?",
            b"*\x00*", b"a\r\n*", b"[\\]]", b"K*", b"k[0-]", b"[]", b"*?*?", b"k[1"]


def mixcase(rng, word):
    if rng.random() < 0.3:
        return bytes(c ^ 0x20 if (rng.random() < 0.5 and chr(c).isalpha()) else c for c in word)
    return word


def random_command(rng, in_multi):
    k = rng.choice(KEYS)
    k2 = rng.choice(KEYS)
    v = rng.choice(VALUES)
    n = rng.choice(INTS)
    e = rng.choice(EXPIRES)
    f = rng.choice(FIELDS)
    o = rng.choice(OFFSETS)
    set_opts = [[b"NX"], [b"XX"], [b"GET"], [b"EX", e], [b"PX", e], [b"EXAT", e],
                [b"PXAT", e], [b"KEEPTTL"], [b"EX"], [b"FOO"]]
    opts = []
    for _ in range(rng.randrange(0, 3)):
        opts += rng.choice(set_opts)
    choices = [
        [b"SET", k, v] + opts,
        [b"SET", k, v],
        [b"SET", k, v, b"EX", b"1000"],
        [b"GET", k],
        [b"GETSET", k, v],
        [b"GETDEL", k],
        [b"MGET", k, k2, rng.choice(KEYS)],
        [b"MSET", k, v, k2, rng.choice(VALUES)],
        [b"MSET", k, v, k2],
        [b"MSETNX", k, v, k2, rng.choice(VALUES)],
        [b"MSETNX", k, v, k, rng.choice(VALUES)],
        [b"DEL", k, k2],
        [b"UNLINK", k, k2, k],
        [b"EXISTS", k, k2, k],
        [b"INCR", k],
        [b"INCRBY", k, n],
        [b"DECR", k],
        [b"DECRBY", k, n],
        [b"APPEND", k, v],
        [b"STRLEN", k],
        [b"GETRANGE", k, o, rng.choice(OFFSETS)],
        [b"SETRANGE", k, rng.choice(OFFSETS[:7] + [b"abc", b"536870912", b"9223372036854775807",
                                                   b"-9223372036854775808"]), v],
        [b"SETRANGE", k, rng.choice([b"536870911", b"536870912", b"100000000000"]),
         rng.choice([b"", b"xy"])],
        [b"TYPE", k],
        [b"RENAME", k, k2],
        [b"RENAME", k, k],
        [b"EXPIRE", k, e],
        [b"EXPIRE", k, rng.choice([b"1000", b"2000"]), rng.choice([b"NX", b"XX", b"GT", b"LT",
                                                                    b"FOO"])],
        [b"PEXPIRE", k, e],
        [b"TTL", k],
        [b"PTTL", k],
        [b"PERSIST", k],
        [b"HSET", k, f, v],
        [b"HSET", k, f, v, rng.choice(FIELDS), rng.choice(VALUES)],
        [b"HSET", k, f],
        [b"HGET", k, f],
        [b"HDEL", k, f, rng.choice(FIELDS)],
        [b"HGETALL", k],
        [b"HLEN", k],
        [b"HEXISTS", k, f],
        [b"HINCRBY", k, f, n],
        [b"HKEYS", k],
        [b"HVALS", k],
        [b"HSTRLEN", k, f],
        [b"HMGET", k, f, rng.choice(FIELDS)],
        [b"HSETNX", k, f, v],
        [b"DBSIZE"],
        [b"ECHO", v],
        [b"PING"],
        [b"PING", v],
        [b"SETNX", k, v],
        [b"SETEX", k, e, v],
        [b"PSETEX", k, e, v],
        [b"GETEX", k] + rng.choice([[], [b"PERSIST"], [b"EX", e], [b"PX", e], [b"FOO"]]),
        [b"INCRBYFLOAT", k, rng.choice([b"1.5", b"-0.5", b"abc", b"inf", b"1e308", b"0"])],
        [b"HINCRBYFLOAT", k, f, rng.choice([b"1.5", b"-0.5", b"abc", b"inf", b"1e308",
                                              b"0", b"", b"1e-400", b"0x10"])],
        [b"TOUCH", k, k2],
        [b"COPY", k, k2],
        [b"EXPIRETIME", k],
        [b"SELECT", rng.choice([b"0", b"0", b"1", b"abc", b"-1", b"16", b"100000000000"])],
        [b"FLUSHDB"] if rng.random() < 0.1 else [b"DBSIZE"],
        [b"COPY", k, k2, b"DB", rng.choice([b"0", b"1", b"16", b"x"])] + rng.choice([[], [b"REPLACE"]]),
        [b"NOSUCHCOMMAND", k],
    ]
    if not in_multi:
        choices += [
            [b"KEYS", rng.choice(PATTERNS)],
            [b"SCANALL", rng.choice(PATTERNS), rng.choice([b"1", b"3", b"10", b"1000"])],
            [b"SCAN", rng.choice([b"abc", b"18446744073709551616", b" 1", b"1.5"])],
            [b"SCAN", b"0", rng.choice([b"COUNT", b"MATCH", b"TYPE", b"FOO"])],
            [b"SCAN", b"0", b"COUNT", rng.choice([b"0", b"-1", b"abc"])],
        ]
    cmd = rng.choice(choices)
    r = rng.random()
    if cmd[0] == b"SCANALL":
        pass
    elif r < 0.04 and len(cmd) > 1:
        cmd = cmd[:-1]  # wrong arity (sometimes)
    elif r < 0.06:
        cmd = cmd + [b"extra"]
    return [mixcase(rng, a) if i == 0 or a.isalpha() and a.isupper() else a
            for i, a in enumerate(cmd)]


# ---------------------------------------------------------------- running

class Pair:
    """A connection to each server in one protocol, plus a second (RESP2) one each."""

    def __init__(self, proto):
        self.proto = proto
        self.r = Conn(PORT_REDIS, proto)
        self.f = Conn(PORT_FUSION_RESP, proto)
        self.r_other = Conn(PORT_REDIS, 2)
        self.f_other = Conn(PORT_FUSION_RESP, 2)

    def close(self):
        for c in (self.r, self.f, self.r_other, self.f_other):
            c.close()


def scan_all(conn, pattern, count):
    cursor = b"0"
    keys = set()
    first = None
    for _ in range(10000):
        r = conn.call([b"SCAN", cursor, b"MATCH", pattern, b"COUNT", count])
        if r[0] != "arr":
            return r
        if first is None:
            first = (r[0], len(r[1]), r[1][0][0], r[1][1][0])
        cursor = r[1][0][1]
        keys.update(x[1] for x in r[1][1][1])
        if cursor == b"0":
            break
    return ("scanall", first, sorted(keys))


class Checker:
    def __init__(self, verbose):
        self.verbose = verbose
        self.diffs = []
        self.seen = set()

    def report(self, label, history, cmd, ra, fa):
        # One report per command name and reply kinds (per command in the hand-written
        # cases); -v prints every one.
        detail = tuple(cmd) if label.startswith("case") else None
        sig = (cmd[0].upper(), ra[0], fa[0], ra[1][:40] if ra[0] == "err" else None, detail)
        self.diffs.append((label, cmd, ra, fa))
        if sig in self.seen and not self.verbose:
            return
        self.seen.add(sig)
        print("DIFF [%s] %r" % (label, cmd))
        print("   redis:   %r" % (ra,))
        print("   fusiond: %r" % (fa,))
        if self.verbose:
            for h in history[-8:]:
                print("   after: %r" % (h,))

    def step(self, pair, label, history, cmd):
        name = cmd[0].upper()
        if name == b"SCANALL":
            ra = scan_all(pair.r, cmd[1], cmd[2])
            fa = scan_all(pair.f, cmd[1], cmd[2])
        else:
            ra = pair.r.call(cmd)
            fa = pair.f.call(cmd)
        if not same(cmd, ra, fa):
            self.report(label, history, cmd, ra, fa)
        history.append(cmd)
        return ra, fa

    def multi(self, pair, label, history, cmds, interfere=None, watch=None):
        """WATCH? MULTI cmds... (other client writes?) EXEC, EXEC's elements compared."""
        if watch:
            self.step(pair, label, history, [b"WATCH"] + watch)
        self.step(pair, label, history, [b"MULTI"])
        for c in cmds:
            self.step(pair, label, history, c)
        if interfere:
            pair.r_other.call(interfere)
            pair.f_other.call(interfere)
            history.append([b"(other client)"] + interfere)
        ra = pair.r.call([b"EXEC"])
        fa = pair.f.call([b"EXEC"])
        history.append([b"EXEC"])
        if ra[0] == "arr" and fa[0] == "arr" and len(ra[1]) == len(fa[1]) == len(cmds):
            for c, a, b in zip(cmds, ra[1], fa[1]):
                if not same(c, a, b):
                    self.report(label + " in EXEC", history, c, a, b)
        elif not same([b"EXEC"], ra, fa):
            self.report(label, history, [b"EXEC"], ra, fa)


def flush(pair):
    pair.r.call([b"FLUSHALL"])
    pair.f.call([b"FLUSHALL"])


# Hand-written cases: each runs on an empty database. A list is a command; ("multi", [...])
# a MULTI block; ("watch", keys, [...], interfering command) a WATCH'd block.
CASES = [
    [[b"SET", b"k", b"v", b"NX", b"XX"], [b"SET", b"k", b"v", b"EX", b"10", b"PX", b"100"],
     [b"SET", b"k", b"v", b"KEEPTTL", b"EX", b"10"], [b"SET", b"k", b"v", b"GET", b"NX"],
     [b"SET", b"k", b"v", b"NX", b"GET"], [b"SET", b"k", b"v", b"XX", b"GET"],
     [b"SET", b"k", b"v", b"EX", b"0"], [b"SET", b"k", b"v", b"EX", b"-1"],
     [b"SET", b"k", b"v", b"PX", b"0"], [b"SET", b"k", b"v", b"EXAT", b"0"],
     [b"SET", b"k", b"v", b"EX", b"9223372036854775807"],
     [b"SET", b"k", b"v", b"PX", b"9223372036854775807"],
     [b"SET", b"k", b"v", b"EX", b"9223372036854775"],
     [b"SET", b"k", b"v", b"EX", b"9223372036854776"],
     [b"SET", b"k", b"v", b"EX", b"abc"], [b"SET", b"k", b"v", b"EX"],
     [b"SET", b"k", b"v", b"ex", b"100", b"nx"], [b"TTL", b"k"], [b"set", b"k", b"v", b"Px", b"5000000"],
     [b"PTTL", b"k"], [b"SET", b"k", b"v2", b"KEEPTTL", b"GET"], [b"TTL", b"k"],
     [b"SET", b"k", b"v3", b"EX", b"100", b"EX", b"200"], [b"TTL", b"k"],
     [b"SET", b"k", b"v3", b"NX", b"NX"], [b"SET", b"k", b"v3", b"GET", b"GET"],
     [b"SET", b"k", b"v3", b"KEEPTTL", b"PERSIST"]],
    [[b"SET", b"n", b"9223372036854775807"], [b"INCR", b"n"], [b"INCRBY", b"n", b"0"],
     [b"SET", b"n", b"-9223372036854775808"], [b"DECR", b"n"],
     [b"DECRBY", b"n", b"-9223372036854775808"], [b"SET", b"n", b"5"],
     [b"DECRBY", b"n", b"-9223372036854775808"], [b"INCRBY", b"n", b"9223372036854775808"],
     [b"SET", b"n", b" 5"], [b"INCR", b"n"], [b"SET", b"n", b"5 "], [b"INCR", b"n"],
     [b"SET", b"n", b"05"], [b"INCR", b"n"], [b"SET", b"n", b"-0"], [b"INCR", b"n"],
     [b"SET", b"n", b""], [b"INCR", b"n"], [b"SET", b"n", b"+5"], [b"INCR", b"n"],
     [b"SET", b"n", b"1" * 25], [b"INCR", b"n"], [b"HSET", b"h", b"f", b"1"], [b"INCR", b"h"],
     [b"INCRBY", b"n2", b"abc"], [b"INCRBY", b"n2", b""], [b"GET", b"n2"],
     [b"INCRBYFLOAT", b"n3", b"1e400"], [b"INCRBYFLOAT", b"n3", b"nan"],
     [b"SET", b"n3", b"1e308"], [b"INCRBYFLOAT", b"n3", b"1e308"]],
    [[b"SET", b"k", b"v"], [b"EXPIRE", b"k", b"0"], [b"EXISTS", b"k"], [b"SET", b"k", b"v"],
     [b"EXPIRE", b"k", b"-5"], [b"GET", b"k"], [b"SET", b"k", b"v"],
     [b"EXPIRE", b"k", b"9223372036854775807"], [b"EXPIRE", b"k", b"9223372036854775"],
     [b"EXPIRE", b"k", b"9223372036854776"], [b"EXPIRE", b"k", b"-9223372036854775808"],
     [b"EXISTS", b"k"], [b"SET", b"k", b"v"],
     [b"PEXPIRE", b"k", b"9223372036854775807"], [b"PEXPIRE", b"k", b"-9223372036854775808"],
     [b"EXISTS", b"k"], [b"SET", b"k", b"v"],
     [b"EXPIRE", b"k", b"100", b"NX"], [b"EXPIRE", b"k", b"100", b"NX"],
     [b"EXPIRE", b"k", b"200", b"XX"], [b"EXPIRE", b"k", b"100", b"NX", b"XX"],
     [b"EXPIRE", b"k", b"100", b"GT", b"LT"], [b"EXPIRE", b"k", b"100", b"NX", b"GT"],
     [b"EXPIRE", b"k", b"50", b"GT"], [b"EXPIRE", b"k", b"5000", b"GT"],
     [b"EXPIRE", b"k", b"5000", b"LT"], [b"TTL", b"k"],
     [b"PERSIST", b"k"], [b"PERSIST", b"k"], [b"TTL", b"k"], [b"TTL", b"missing"],
     [b"PTTL", b"missing"], [b"EXPIRE", b"missing", b"100"], [b"EXPIRE", b"k", b"abc"],
     [b"EXPIRE", b"k", b""], [b"EXPIRE", b"k", b"1.5"], [b"PERSIST", b"missing"],
     [b"EXPIRE", b"k", b"100", b"FOO"], [b"EXPIRETIME", b"k"], [b"EXPIRE", b"k", b"100", b"gt"],
     [b"EXPIREAT", b"k", b"-1"], [b"EXISTS", b"k"]],
    [[b"SET", b"s", b"Hello World"], [b"GETRANGE", b"s", b"0", b"-1"],
     [b"GETRANGE", b"s", b"-3", b"-1"], [b"GETRANGE", b"s", b"-100", b"-50"],
     [b"GETRANGE", b"s", b"5", b"3"], [b"GETRANGE", b"s", b"-1", b"-5"],
     [b"GETRANGE", b"s", b"100", b"200"], [b"GETRANGE", b"s", b"0", b"100"],
     [b"GETRANGE", b"s", b"-100", b"100"], [b"GETRANGE", b"s", b"0", b"0"],
     [b"GETRANGE", b"s", b"-1", b"-1"], [b"GETRANGE", b"s", b"a", b"1"],
     [b"GETRANGE", b"s", b"9223372036854775807", b"-9223372036854775808"],
     [b"GETRANGE", b"s", b"-9223372036854775808", b"9223372036854775807"],
     [b"GETRANGE", b"missing", b"0", b"-1"], [b"GETRANGE", b"missing", b"5", b"1"],
     [b"SET", b"e", b""], [b"GETRANGE", b"e", b"0", b"-1"], [b"GETRANGE", b"e", b"-1", b"0"],
     [b"SETRANGE", b"s", b"6", b"Redis"], [b"GET", b"s"], [b"SETRANGE", b"s", b"20", b"x"],
     [b"GET", b"s"], [b"SETRANGE", b"s", b"-1", b"x"], [b"SETRANGE", b"new", b"0", b""],
     [b"EXISTS", b"new"], [b"SETRANGE", b"new", b"5", b""], [b"EXISTS", b"new"],
     [b"SETRANGE", b"new", b"-1", b""], [b"SETRANGE", b"new", b"3", b"ab"], [b"GET", b"new"],
     [b"SETRANGE", b"new", b"536870912", b"x"], [b"SETRANGE", b"new", b"536870911", b"xy"],
     [b"SETRANGE", b"new", b"536870912", b""], [b"SETRANGE", b"miss2", b"536870912", b""],
     [b"SETRANGE", b"new", b"abc", b"x"], [b"SETRANGE", b"new", b"9223372036854775807", b"x"],
     [b"SETRANGE", b"s", b"0", b""], [b"HSET", b"h", b"f", b"v"],
     [b"SETRANGE", b"h", b"0", b"x"], [b"SETRANGE", b"h", b"0", b""],
     [b"SETRANGE", b"h", b"-1", b"x"], [b"GETRANGE", b"h", b"0", b"1"],
     [b"APPEND", b"h", b"x"], [b"STRLEN", b"h"], [b"STRLEN", b"missing"],
     [b"APPEND", b"ap", b""], [b"EXISTS", b"ap"], [b"APPEND", b"ap", b"a\r\n\x00"],
     [b"GET", b"ap"]],
    [[b"MSETNX", b"a", b"1", b"b", b"2"], [b"MSETNX", b"b", b"3", b"c", b"4"], [b"MGET", b"a", b"b", b"c"],
     [b"MSETNX", b"c", b"1", b"c", b"2"], [b"GET", b"c"], [b"MSETNX", b"x"], [b"MSET", b"x"],
     [b"MSET", b"x", b"1", b"y"], [b"MSET", b"x", b"1", b"x", b"2"], [b"GET", b"x"],
     [b"HSET", b"h", b"f", b"v"], [b"MSETNX", b"h", b"1", b"z", b"2"], [b"MGET", b"h", b"z", b"x"],
     [b"MSET", b"h", b"s"], [b"TYPE", b"h"], [b"MGET"]],
    [[b"SET", b"a", b"1"], [b"RENAME", b"a", b"a"], [b"RENAME", b"missing", b"a"],
     [b"RENAME", b"missing", b"missing"], [b"SET", b"b", b"2", b"EX", b"100"],
     [b"RENAME", b"b", b"a"], [b"TTL", b"a"], [b"EXISTS", b"b"], [b"HSET", b"h", b"f", b"v"],
     [b"RENAME", b"h", b"a"], [b"TYPE", b"a"], [b"HGETALL", b"a"], [b"RENAME", b"a", b"a"],
     [b"TTL", b"a"]],
    [[b"HSET", b"h", b"a", b"1", b"b", b"2", b"a", b"3"], [b"HGETALL", b"h"], [b"HLEN", b"h"],
     [b"HSET", b"h", b"a"], [b"HSET", b"h"], [b"HSET", b"h", b"a", b"1", b"b"],
     [b"HINCRBY", b"h", b"a", b"9223372036854775807"], [b"HINCRBY", b"h", b"a", b"1"],
     [b"HSET", b"h", b"m", b"9223372036854775807"], [b"HINCRBY", b"h", b"m", b"1"],
     [b"HSET", b"h", b"m", b"-9223372036854775808"], [b"HINCRBY", b"h", b"m", b"-1"],
     [b"HINCRBY", b"h", b"m", b"abc"], [b"HINCRBY", b"h", b"m", b"9223372036854775808"],
     [b"HSET", b"h", b"s", b"abc"], [b"HINCRBY", b"h", b"s", b"1"],
     [b"HSET", b"h", b"sp", b" 1"], [b"HINCRBY", b"h", b"sp", b"1"],
     [b"HINCRBY", b"h", b"new", b"-5"], [b"HGET", b"h", b"new"],
     [b"HDEL", b"h", b"a", b"a", b"zz"], [b"HDEL", b"h"], [b"HEXISTS", b"h", b"a"],
     [b"HEXISTS", b"h", b"b"], [b"HGET", b"h", b"zz"], [b"HGET", b"missing", b"a"],
     [b"HGETALL", b"missing"], [b"HLEN", b"missing"], [b"SET", b"s", b"v"],
     [b"HSET", b"s", b"a", b"1"], [b"HGET", b"s", b"a"], [b"HGETALL", b"s"], [b"HLEN", b"s"],
     [b"HDEL", b"s", b"a"], [b"HEXISTS", b"s", b"a"], [b"HINCRBY", b"s", b"a", b"1"],
     [b"GET", b"h"], [b"GETSET", b"h", b"x"], [b"GETDEL", b"h"], [b"APPEND", b"h", b"x"],
     [b"HDEL", b"h", b"b", b"m", b"s", b"sp", b"new"], [b"EXISTS", b"h"], [b"TYPE", b"h"],
     [b"TYPE", b"s"], [b"TYPE", b"missing"], [b"HSET", b"h2", b"", b""], [b"HGETALL", b"h2"],
     [b"HINCRBY", b"h2", b"", b"1"], [b"HMSET", b"h2", b"a", b"1"], [b"HMSET", b"h2", b"a"]],
    [[b"MSET", b"k1", b"1", b"k2", b"2", b"k3", b"3", b"key*", b"x", b"k[1]", b"y",
      b"a\r\nb", b"z", b"\x00nul", b"w", b"", b"empty", b"K1", b"u", b"k\\", b"bs"],
     [b"HSET", b"hk", b"f", b"v"]]
    + [[b"KEYS", p] for p in PATTERNS + [b"k\\", b"k\\\\", b"*\\", b"k[\\]", b"k[a-]*",
                                          b"[k]*", b"k[1-3]", b"k[3-1]", b"k[^1-2]"]]
    + [[b"SCANALL", p, b"2"] for p in PATTERNS]
    + [[b"SCAN", b"0", b"MATCH"], [b"SCAN", b"0", b"COUNT", b"0"], [b"SCAN", b"0", b"COUNT", b"-1"],
       [b"SCAN", b"abc"], [b"SCAN", b"0", b"TYPE", b"hash"],
       [b"SCAN", b"0", b"TYPE", b"string", b"COUNT", b"1000"], [b"SCAN", b"0", b"foo", b"bar"],
       [b"SCAN", b"0", b"count", b"abc"],
       [b"SCAN", b"18446744073709551616"], [b"DBSIZE"]],
    [("multi", [[b"SET", b"a", b"1"], [b"INCR", b"a"], [b"HSET", b"a", b"f", b"v"], [b"GET", b"a"]]),
     ("multi", [[b"SET", b"a", b"1"], [b"NOSUCH"], [b"GET", b"a"]]), [b"GET", b"a"],
     ("multi", [[b"SET", b"a"], [b"GET", b"a"]]),
     ("multi", [[b"MULTI"], [b"GET", b"a"]]),
     ("multi", [[b"WATCH", b"a"], [b"GET", b"a"]]),
     ("multi", [[b"SET", b"a", b"5", b"NX", b"XX"], [b"INCRBY", b"a", b"x"], [b"GET", b"a"]]),
     ("multi", [[b"EXEC"]]),
     [b"EXEC"], [b"DISCARD"], [b"MULTI"], [b"DISCARD"], [b"multi"], [b"set", b"b", b"1"],
     [b"discard"], [b"GET", b"b"], [b"MULTI"], [b"PING"], [b"ECHO", b"x"], [b"EXEC"],
     [b"MULTI"], [b"UNWATCH"], [b"EXEC"], [b"WATCH"], [b"UNWATCH"],
     ("watch", [b"a"], [[b"INCR", b"a"]], [b"SET", b"a", b"9"]), [b"GET", b"a"],
     ("watch", [b"a"], [[b"INCR", b"a"]], None), [b"GET", b"a"],
     ("watch", [b"zz"], [[b"SET", b"zz", b"1"]], [b"SET", b"zz", b"2"]), [b"GET", b"zz"],
     ("watch", [b"a"], [[b"INCR", b"a"]], [b"GET", b"a"]), [b"GET", b"a"],
     ("watch", [b"a"], [[b"INCR", b"a"]], [b"EXPIRE", b"a", b"1000"]), [b"GET", b"a"],
     ("watch", [b"a"], [[b"INCR", b"a"]], [b"SET", b"a", b"10"]), [b"GET", b"a"],
     ("multi", [[b"SELECT", b"0"], [b"DBSIZE"]]),
     ("multi", [[b"QUIT_NOT"], [b"GET", b"a"]]),
     ("multi", []),
     ("multi", [[b"SET", b"x", b"1"], [b"INCR", b"x", b"2"]]),
     ("multi", [[b"GET"]]),
     [b"GET", b"x"]],
    [[b"CLIENT", b"x" * 200], [b"CLIENT", b"FOO\x00BAR"], [b"CONFIG", b"y" * 300],
     [b"HELLO", b"3", b"FOO\x00X"], [b"HELLO", b"3", b"z" * 300], [b"COMMAND", b"FOO\x00"],
     [b"SET", b"k", b"v", b"FOO\x00"], [b"CLIENT", b"SETNAME", b"a\x00b"],
     [b"N" * 300, b"a"], [b"CLIENT", b"KILL", b"ID", b"x"], [b"CLIENT", b"KILL", b"FOO", b"x"],
     [b"CLIENT", b"KILL", b"x" * 200], [b"CLIENT", b"KILL", b"SKIPME", b"maybe"],
     [b"CLIENT", b"NO-EVICT", b"x\x00"], [b"CLIENT", b"GETNAME", b"x"],
     [b"SCAN", b"0", b"TYPE", b"x\x00"], [b"GETEX", b"k", b"FOO\x00"],
     [b"COMMAND", b"INFO", b"get\x00"], [b"COMMAND", b"DOCS", b"nosuch"],
     [b"COMMAND", b"GETKEYS"], [b"COMMAND", b"GETKEYS", b"nosuch", b"a"],
     [b"COMMAND", b"GETKEYS", b"get"], [b"COMMAND", b"GETKEYS", b"ping"],
     [b"COMMAND", b"GETKEYS", b"mset", b"a", b"1", b"b", b"2"],
     [b"COMMAND", b"GETKEYSANDFLAGS", b"set", b"a", b"1"],
     [b"COMMAND", b"LIST", b"FILTERBY", b"pattern", b"hget*"],
     [b"COMMAND", b"LIST", b"FILTERBY", b"foo", b"x"], [b"COMMAND", b"LIST", b"FOO"]],
    [[b"PING", b"a", b"b"], [b"ECHO"], [b"ECHO", b"a", b"b"], [b"ECHO", b""], [b"PING", b""],
     [b"GET"], [b"GET", b"a", b"b"], [b"SET", b"a"], [b"DEL"], [b"EXISTS"], [b"TYPE"],
     [b"STRLEN"], [b"INCR"], [b"GETRANGE", b"a", b"0"], [b"SETRANGE", b"a", b"0"],
     [b"RENAME", b"a"], [b"EXPIRE", b"a"], [b"TTL"], [b"HGET", b"a"], [b"HLEN"],
     [b"HEXISTS", b"a"], [b"HINCRBY", b"a", b"b"], [b"KEYS"], [b"SCAN"], [b"DBSIZE", b"x"],
     [b"MULTI", b"x"], [b"EXEC", b"x"], [b"DISCARD", b"x"], [b"UNWATCH", b"x"],
     [b"SELECT"], [b"SELECT", b"0", b"1"], [b"SELECT", b"abc"], [b"SELECT", b"-1"],
     [b"SELECT", b"0"], [b"CONFIG"], [b"CONFIG", b"FOO"], [b"CLIENT"], [b"CLIENT", b"FOO"],
     [b"CLIENT", b"SETNAME", b"a b"], [b"CLIENT", b"SETNAME", b"ab"], [b"CLIENT", b"GETNAME"],
     [b"CLIENT", b"SETNAME", b""], [b"CLIENT", b"GETNAME"], [b"COMMAND", b"FOO"],
     [b"COMMAND", b"COUNT", b"x"], [b"HELLO", b"4"], [b"HELLO", b"abc"], [b"AUTH", b"x"],
     [b"AUTH", b"a", b"b"], [b"", b"x"], [b"get\x00", b"x"], [b"CONFIG", b"GET"],
     [b"CONFIG", b"GET", b"nosuchparam"], [b"CONFIG", b"GET", b"DATABASES"],
     [b"CONFIG", b"GET", b"databases", b"Databases", b"data*"],
     [b"CONFIG", b"GET", b"DATA*"], [b"CONFIG", b"GET", b"Save", b"nosuch"], 
     [b"INFO", b"nosuchsection"], [b"FLUSHDB", b"x"], [b"FLUSHALL", b"SYNC", b"x"],
     [b"COPY", b"a", b"b", b"FOO"]],
]


# Raw bytes, each on a fresh connection: what comes back (until the server closes or is
# quiet for half a second) must be the same bytes. Inline commands and protocol errors.
RAW = [
    b"*0\r\nPING\r\n",
    b"\r\nPING\r\n",
    b"PING\r\n",
    b"PING\n",
    b"ping   hello\r\n",
    b'SET "a b" "c d"\r\nGET "a b"\r\nDEL "a b"\r\n',
    b'ECHO "\\x41\\n\\t\\"q"\r\n',
    b"ECHO 'it''s'\r\n",
    b"ECHO 'a\\'b'\r\n",
    b'ECHO "abc\r\nPING\r\n',
    b'ECHO "a"b\r\nPING\r\n',
    b"*1\r\n$abc\r\nPING\r\n",
    b"*abc\r\nPING\r\n",
    b"*1\r\nfoo\r\nPING\r\n",
    b"*2\r\n$4\r\nECHO\r\n$600000000\r\n",
    b"*1\r\n$-1\r\nPING\r\n",
    b"*-1\r\nPING\r\n",
    b"*3000000000\r\n",
    b"QUIT\r\nPING\r\n",
    b"*1\r\n$4\r\nQUIT\r\n",
    b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n",
    b"ECHO\r\n",
    b"  \r\nPING\r\n",
    b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n",
    b"ECHO " + b"x" * 70000,
    b"ECHO " + b"x" * 60000 + b"\r\n",
    b"*1\r\n$04\r\nPING\r\n",
    b"*01\r\n$4\r\nPING\r\n",
    b"*+1\r\n$4\r\nPING\r\n",
    b"*1\r\n$+4\r\nPING\r\n",
    b"*1 \r\n$4\r\nPING\r\n",
    b"HELLO 3\r\nPING\r\nECHO x\r\nHGETALL nosuch\r\nGET nosuch\r\nEXEC\r\nHELLO 2\r\nGET nosuch\r\n",
    b"HELLO 3\r\nMULTI\r\nGET nosuch\r\nSET a 1\r\nINCRBYFLOAT a 1.5\r\nHSET h f v\r\nHGETALL h\r\nEXEC\r\nDEL a h\r\n",
    b"HELLO 3\r\nCLIENT GETNAME\r\nCLIENT SETNAME x\r\nCLIENT GETNAME\r\nCONFIG GET nosuch\r\nEXISTS a\r\nSCAN 0 MATCH nosuch*\r\nKEYS nosuch*\r\n",
    b"HELLO 3 SETNAME a\\ b\r\nHELLO 2 AUTH default x\r\nHELLO 3 FOO\r\nHELLO 1\r\nHELLO 2.0\r\nPING\r\n",
    b"AUTH x\r\nAUTH default x\r\nAUTH a b c\r\nPING\r\n",
    b"CLIENT SETNAME a b\r\nCLIENT SETNAME \"a\nb\"\r\nclient getname\r\nCLIENT SETNAME \"\"\r\nCLIENT GETNAME\r\n",
    b"MULTI\r\nMULTI\r\nEXEC\r\nMULTI\r\nWATCH a\r\nEXEC\r\nDISCARD\r\nMULTI\r\nQUIT\r\nPING\r\n",
    b"AUTH DEFAULT x\r\nHELLO 3 AUTH Default x\r\nHELLO 3 AUTH default x\r\nPING\r\n",
]


def raw_exchange(port, data):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(data)
    sock.settimeout(0.5)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                out += b"<closed>"
                break
            out += chunk
    except socket.timeout:
        pass
    sock.close()
    return out


def hello_neutral(out):
    # HELLO's reply names the server, its version and the connection's id: blank them.
    import re
    out = re.sub(rb"(\$6\r\nserver\r\n)\$\d+\r\n[^\r]*\r\n", rb"\1<server>", out)
    out = re.sub(rb"(\+server\r\n)\+[^\r]*\r\n", rb"\1<server>", out)
    out = re.sub(rb"(\$7\r\nversion\r\n)\$\d+\r\n[^\r]*\r\n", rb"\1<version>", out)
    out = re.sub(rb"(\$2\r\nid\r\n):\d+\r\n", rb"\1<id>", out)
    out = re.sub(rb"(\$4\r\nmode\r\n)\$\d+\r\n[^\r]*\r\n", rb"\1<mode>", out)
    return out


# With requirepass set (a second pair of servers): what a client sees before and at AUTH.
RAW_AUTH = [
    b"PING\r\nGET a\r\nNOSUCH x\r\nGET\r\nMULTI\r\nEXEC\r\nEXEC x\r\nDISCARD\r\nWATCH a\r\n",
    b"AUTH wrong\r\nAUTH default wrong\r\nAUTH DEFAULT pw-difftest\r\nAUTH other pw-difftest\r\nPING\r\n",
    b"AUTH pw-difftest\r\nPING\r\nAUTH wrong\r\nPING\r\n",
    b"AUTH default pw-difftest\r\nPING\r\n",
    b"HELLO 3\r\nHELLO\r\nHELLO 2 SETNAME x\r\nHELLO 3 AUTH default wrong\r\nHELLO 4 AUTH default pw-difftest\r\nPING\r\n",
    b"HELLO 3 AUTH default pw-difftest\r\nPING\r\nCLIENT GETNAME\r\n",
    b"HELLO 2 AUTH Default pw-difftest SETNAME n\r\nPING\r\n",
    b"CLIENT SETNAME x\r\nCLIENT GETNAME\r\nSELECT 0\r\nQUIT\r\nPING\r\n",
    b"RESET\r\nPING\r\nAUTH pw-difftest\r\nRESET\r\nPING\r\n",
    b"COMMAND COUNT\r\nINFO\r\nCONFIG GET nosuch\r\nDBSIZE\r\n",
    b"*2\r\n$4\r\nAUTH\r\n$11\r\npw-difftest\r\n*20000\r\n",
]


def run_raw(checker, cases=RAW):
    for data in cases:
        a = hello_neutral(raw_exchange(PORT_REDIS, data))
        b = hello_neutral(raw_exchange(PORT_FUSION_RESP, data))
        if a != b:
            checker.report("raw", [], [data], ("raw", a), ("raw", b))


# Within fusiond's limits (README: value 256 KiB, 1,024 keys per transaction).
BIG = b"0123456789" * 20000
CASES.append(
    [[b"MSET"] + [x for i in range(100) for x in (b"bulk:%d" % i, b"v%d" % i)],
     [b"KEYS", b"bulk:*"], [b"KEYS", b"bulk:?"], [b"KEYS", b"bulk:[1-3]?"], [b"DBSIZE"],
     [b"SCANALL", b"*", b"7"], [b"SCANALL", b"bulk:9*", b"1"],
     [b"MGET"] + [b"bulk:%d" % i for i in range(0, 120, 3)],
     [b"DEL"] + [b"bulk:%d" % i for i in range(0, 120, 2)], [b"DBSIZE"],
     [b"EXISTS"] + [b"bulk:%d" % i for i in range(0, 120)],
     [b"SET", b"big", BIG], [b"STRLEN", b"big"], [b"GETRANGE", b"big", b"-10", b"-1"],
     [b"GETRANGE", b"big", b"199990", b"300000"], [b"APPEND", b"big", b"tail"],
     [b"SETRANGE", b"big", b"200010", b"x"], [b"STRLEN", b"big"],
     [b"GETRANGE", b"big", b"199995", b"-1"], [b"GET", b"big"],
     [b"HSET", b"bh"] + [x for i in range(200) for x in (b"f%d" % i, b"%d" % i)],
     [b"HLEN", b"bh"], [b"HGETALL", b"bh"], [b"HKEYS", b"bh"], [b"HVALS", b"bh"],
     [b"HDEL", b"bh"] + [b"f%d" % i for i in range(0, 250, 2)], [b"HLEN", b"bh"],
     [b"HINCRBY", b"bh", b"f1", b"-2"], [b"HGETALL", b"bh"]])


def glob_case(seed=7):
    """Random keys and patterns over the bytes glob gives meaning to: KEYS must agree."""
    rng = random.Random(seed)
    alphabet = b"ab-]^[\\*?"
    word = lambda most: bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, most)))
    keys = sorted({word(5) for _ in range(60)} - {b""})
    case = [[b"MSET"] + [x for k in keys for x in (k, b"v")]]
    case += [[b"KEYS", word(7)] for _ in range(300)]
    return case


CASES.append(glob_case())


def run_case(checker, pair, label, case):
    flush(pair)
    history = []
    for item in case:
        if isinstance(item, tuple) and item[0] == "multi":
            checker.multi(pair, label, history, item[1])
        elif isinstance(item, tuple) and item[0] == "watch":
            checker.multi(pair, label, history, item[2], interfere=item[3], watch=item[1])
        else:
            checker.step(pair, label, history, item)


def run_seed(checker, pair, seed, steps):
    rng = random.Random(seed)
    flush(pair)
    history = []
    label = "seed %d resp%d" % (seed, pair.proto)
    for _ in range(steps):
        x = rng.random()
        if x < 0.1:
            cmds = [random_command(rng, True) for _ in range(rng.randrange(0, 5))]
            if rng.random() < 0.5:
                watch = [rng.choice(KEYS)]
                interfere = rng.choice([None, [b"SET", watch[0], b"z"], [b"GET", watch[0]],
                                        [b"DEL", watch[0]]])
                checker.multi(pair, label, history, cmds, interfere, watch)
            else:
                checker.multi(pair, label, history, cmds)
        else:
            checker.step(pair, label, history, random_command(rng, False))


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, help="run only this seed")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--fusiond", help="the fusiond binary (default: target/release/fusiond)")
    args = ap.parse_args()
    if args.fusiond:
        global FUSIOND
        FUSIOND = os.path.abspath(args.fusiond)
    if shutil.which("redis-server") is None:
        print("difftest: redis-server is not installed; skipped")
        return 0
    tmp = tempfile.mkdtemp(prefix="fusion-difftest-")
    procs = []
    try:
        procs.append(start_redis(tmp))
        procs.append(start_fusiond(tmp))
        checker = Checker(args.verbose)
        if args.seed is None:
            run_raw(checker)
        for proto in (2, 3):
            pair = Pair(proto)
            if args.seed is None:
                for i, case in enumerate(CASES):
                    run_case(checker, pair, "case %d resp%d" % (i, proto), case)
            seeds = [args.seed] if args.seed is not None else range(args.seeds)
            for seed in seeds:
                run_seed(checker, pair, seed, args.steps)
            pair.close()
        for p in procs:
            stop(p)
        procs = [start_redis(tmp, "pw-difftest"), start_fusiond(tmp, "pw-difftest")]
        run_raw(checker, RAW_AUTH)
        print("difftest: %d differences (%d distinct)" % (len(checker.diffs), len(checker.seen)))
        return 1 if checker.diffs else 0
    finally:
        for p in procs:
            if os.environ.get("DIFFTEST_LOGS") and hasattr(p, "stdout_path"):
                print(open(p.stdout_path, errors="replace").read()[-3000:])
            if p.poll() is not None:
                print("difftest: %s exited by itself with %s; its log's end:"
                      % (p.args[0], p.returncode))
                log = p.stdout_path if hasattr(p, "stdout_path") else None
                if log and os.path.exists(log):
                    print(open(log, errors="replace").read()[-3000:])
        for p in procs:
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
