#!/usr/bin/env python3
"""The failover bench's NFS client: libnfs 4.0 over ctypes, NFSv4, creating
new files by path through HOST one after another:

    nfs_writer.py HOST PREFIX INTERVAL_MS reconnect|keep|hold

File i is PREFIX + "%06d" % i, its content the name and a newline repeated
20 times (one WRITE, under libnfs 4.0's NFSv4 limit of ~3,000 bytes).
One line per attempt on stdout, T being CLOCK_MONOTONIC seconds at the
answer: "ok NAME T" or "err NAME T MESSAGE".

`keep`: one context mounted once, as tests/common/nfs_client.py (libnfs
does not reconnect, so after a failover it never writes again).
`hold`: creates one file, PREFIX + "held", and keeps it open without
writing (a client cut off between its OPEN and its first WRITE: the server
holds the file open for writing, the create verifier as its mtime); prints
"held NAME T" and sleeps until killed.
`reconnect`: after any error the context is dropped and the export mounted
afresh through HOST, as an application that reopens by path would; a
kernel client reconnects by itself but would see its old handles stale.
"""
import ctypes
import os
import sys
import time

lib = ctypes.CDLL("libnfs.so.13")
P = ctypes.c_void_p
lib.nfs_init_context.restype = P
lib.nfs_destroy_context.argtypes = [P]
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [P]
lib.nfs_set_version.argtypes = [P, ctypes.c_int]
lib.nfs_set_timeout.argtypes = [P, ctypes.c_int]
lib.nfs_mount.argtypes = [P, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_create.argtypes = [P, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(P)]
lib.nfs_write.argtypes = [P, P, ctypes.c_uint64, ctypes.c_char_p]
lib.nfs_close.argtypes = [P, P]


def error(nfs):
    return (lib.nfs_get_error(nfs) or b"").decode(errors="replace").replace("\n", " ")


def mount(host):
    nfs = lib.nfs_init_context()
    lib.nfs_set_version(nfs, 4)
    lib.nfs_set_timeout(nfs, 2000)
    if lib.nfs_mount(nfs, host.encode(), b"/export") != 0:
        print("err mount %.6f %s" % (time.monotonic(), error(nfs)), flush=True)
        lib.nfs_destroy_context(nfs)
        return None
    return nfs


def put(nfs, name):
    data = (name + "\n").encode() * 20
    fh = P()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if lib.nfs_create(nfs, ("/" + name).encode(), flags, 0o644, ctypes.byref(fh)) != 0:
        return "create: " + error(nfs)
    err = None
    if lib.nfs_write(nfs, fh, len(data), data) != len(data):
        err = "write: " + error(nfs)
    if lib.nfs_close(nfs, fh) != 0 and err is None:
        err = "close: " + error(nfs)
    return err


def main():
    host, prefix, interval, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]) / 1000, sys.argv[4]
    if mode == "hold":
        nfs = mount(host)
        fh = P()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        name = prefix + "held"
        if nfs is None or lib.nfs_create(nfs, ("/" + name).encode(), flags, 0o644, ctypes.byref(fh)) != 0:
            print("err %s %.6f create: %s" % (name, time.monotonic(), nfs and error(nfs)), flush=True)
            sys.exit(1)
        print("held %s %.6f" % (name, time.monotonic()), flush=True)
        while True:
            time.sleep(3600)
    nfs, i = None, 0
    while True:
        if nfs is None:
            nfs = mount(host)
            if nfs is None:
                if mode == "keep":
                    sys.exit(1)
                time.sleep(interval)
                continue
        name = "%s%06d" % (prefix, i)
        err = put(nfs, name)
        t = time.monotonic()
        print("ok %s %.6f" % (name, t) if err is None else "err %s %.6f %s" % (name, t, err), flush=True)
        i += 1
        if err is not None and mode == "reconnect":
            lib.nfs_destroy_context(nfs)
            nfs = None
        time.sleep(interval)


main()
