#!/usr/bin/env python3
"""Splits the inputs of a GPU session into call-sized folders: one device call carries at most
64 MiB (the repo included), while a session needs more (binary, models, FID network, data).

usage: stage.py STAGE_DIR BUDGET_BYTES DEST=SRC [DEST=SRC ...]

DEST is the file's path on the GPU machine under /tmp/dmq/files. Files go, in the given order,
into STAGE_DIR/call1, call2, ..., each folder at most BUDGET_BYTES. A file that fits a budget but
not the room left starts the next folder; a larger one is cut into parts
(DEST with '/' as '%', then .part-K-of-N). Each folder has a MANIFEST line per file it holds
parts of (dest, sha256, number of parts), for scripts/gpu/stage-in.sh on the GPU machine."""
import hashlib
import os
import shutil
import sys


def main():
    stage, budget, specs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    shutil.rmtree(stage, ignore_errors=True)
    call, used = 1, 0
    os.makedirs(f"{stage}/call{call}")
    manifests = {}
    for spec in specs:
        dest, src = spec.split("=", 1)
        data = open(src, "rb").read()
        digest = hashlib.sha256(data).hexdigest()
        if len(data) <= budget and len(data) > budget - used:
            call, used = call + 1, 0
            os.makedirs(f"{stage}/call{call}")
        cuts, off = [], 0
        while off < len(data) or not cuts:
            room = budget - used
            if room <= 0:
                call, used = call + 1, 0
                os.makedirs(f"{stage}/call{call}")
                room = budget
            n = min(len(data) - off, room)
            cuts.append((call, off, n))
            off, used = off + n, used + n
        for k, (c, start, n) in enumerate(cuts, 1):
            name = dest.replace("/", "%") + f".part-{k}-of-{len(cuts)}"
            with open(f"{stage}/call{c}/{name}", "wb") as f:
                f.write(data[start:start + n])
            manifests.setdefault(c, set()).add(f"{dest} {digest} {len(cuts)}")
    for c, lines in sorted(manifests.items()):
        with open(f"{stage}/call{c}/MANIFEST", "w") as f:
            f.write("\n".join(sorted(lines)) + "\n")
        size = sum(os.path.getsize(f"{stage}/call{c}/{x}") for x in os.listdir(f"{stage}/call{c}"))
        print(f"{stage}/call{c}: {size} bytes: " + ", ".join(sorted(l.split()[0] for l in lines)))


if __name__ == "__main__":
    main()
