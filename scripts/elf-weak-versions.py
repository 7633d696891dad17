#!/usr/bin/env python3
"""Marks an ELF binary's version requirements on the named libraries weak.

Usage: elf-weak-versions.py BINARY LIBPREFIX...  (e.g. libcublas libcurand)

A binary built against CUDA 11.8 (Debian's toolkit) asks for symbol version
`libcublas.so.11`; with the requirement weak, ld.so accepts CUDA 13's
libcublas.so.13 (the calls candle makes have the same ABI). Used by
scripts/pack-gpu-run.sh.
"""
import struct, sys
# Mark version requirements on the named libraries as weak (VER_FLG_WEAK), so
# ld.so accepts a library of another major version that lacks that version node.
path, prefixes = sys.argv[1], sys.argv[2:]
b = bytearray(open(path, 'rb').read())
e_shoff, = struct.unpack_from('<Q', b, 0x28)
e_shentsize, e_shnum, e_shstrndx = struct.unpack_from('<HHH', b, 0x3A)
secs = []
for i in range(e_shnum):
    off = e_shoff + i * e_shentsize
    name, typ, flags, addr, offset, size, link, info, align, entsize = struct.unpack_from('<IIQQQQIIQQ', b, off)
    secs.append((typ, offset, size, link, info))
SHT_GNU_verneed = 0x6ffffffe
n = 0
for typ, offset, size, link, info in secs:
    if typ != SHT_GNU_verneed:
        continue
    stroff = secs[link][1]
    cstr = lambda o: bytes(b[stroff + o: b.index(0, stroff + o)]).decode()
    p = offset
    for _ in range(info):
        vn_version, vn_cnt, vn_file, vn_aux, vn_next = struct.unpack_from('<HHIII', b, p)
        f = cstr(vn_file)
        a = p + vn_aux
        for _ in range(vn_cnt):
            vna_hash, vna_flags, vna_other, vna_name, vna_next = struct.unpack_from('<IHHII', b, a)
            nm = cstr(vna_name)
            if any(f.startswith(x) for x in prefixes):
                struct.pack_into('<H', b, a + 4, vna_flags | 2)
                print(f'{path}: {f} needs {nm}: now weak'); n += 1
            a += vna_next
        p += vn_next
open(path, 'wb').write(b)
print(n, 'entries')
