#!/usr/bin/env python3
"""A long-lived NFSv4 client for the failover tests: one libnfs context
(one session, the export's root file handle kept) mounted once, then new
files created by path, written and closed one after another:

    nfs_client.py HOST PREFIX INTERVAL_MS

File i is PREFIX + "%05d" % i, its content the name and a newline,
repeated 20 times. One line per attempt on stdout: "ok NAME" or
"err NAME MESSAGE". Runs until killed. libnfs 4.0 through ctypes (its
command-line tools keep nothing between files).
"""
import ctypes
import os
import sys
import time

lib = ctypes.CDLL("libnfs.so.13")
P = ctypes.c_void_p
lib.nfs_init_context.restype = P
lib.nfs_get_error.restype = ctypes.c_char_p
lib.nfs_get_error.argtypes = [P]
lib.nfs_set_version.argtypes = [P, ctypes.c_int]
lib.nfs_set_timeout.argtypes = [P, ctypes.c_int]
lib.nfs_mount.argtypes = [P, ctypes.c_char_p, ctypes.c_char_p]
lib.nfs_create.argtypes = [P, ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.POINTER(P)]
lib.nfs_write.argtypes = [P, P, ctypes.c_uint64, ctypes.c_char_p]
lib.nfs_close.argtypes = [P, P]


def main():
    host, prefix, interval = sys.argv[1], sys.argv[2], int(sys.argv[3]) / 1000
    nfs = lib.nfs_init_context()
    lib.nfs_set_version(nfs, 4)
    lib.nfs_set_timeout(nfs, 2000)
    if lib.nfs_mount(nfs, host.encode(), b"/export") != 0:
        print("err mount %s" % lib.nfs_get_error(nfs).decode(errors="replace"), flush=True)
        sys.exit(1)
    i = 0
    while True:
        name = "%s%05d" % (prefix, i)
        data = (name + "\n").encode() * 20
        fh = P()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        err = None
        if lib.nfs_create(nfs, ("/" + name).encode(), flags, 0o644, ctypes.byref(fh)) != 0:
            err = "create: " + lib.nfs_get_error(nfs).decode(errors="replace")
        else:
            if lib.nfs_write(nfs, fh, len(data), data) != len(data):
                err = "write: " + (lib.nfs_get_error(nfs) or b"").decode(errors="replace")
            if lib.nfs_close(nfs, fh) != 0 and err is None:
                err = "close: " + (lib.nfs_get_error(nfs) or b"").decode(errors="replace")
        print("ok %s" % name if err is None else "err %s %s" % (name, err), flush=True)
        i += 1
        time.sleep(interval)


main()
