"""memory.page_out_alone: the file pages only this process maps leave it; those another
process maps too stay (the kernel decides, madvise MADV_PAGEOUT)."""
import mmap
import os
import subprocess
import sys

from astara_router.memory import page_out_alone

PAGES = 64


def resident_kb(path):
    """Rss of this process's mappings of ``path`` (smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=5)
            if "-" in first[0] and len(first) >= 5 and not line[0].isupper():
                inside = len(first) == 6 and first[5].strip() == str(path)
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


def mapped_and_touched(path):
    """``path`` written and synced (clean pages, as a library's are: the kernel does not
    write dirty ones back to page them out), mapped and every page read."""
    with open(path, "wb") as f:
        f.write(os.urandom(PAGES * mmap.PAGESIZE))
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        mapping = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    for page in range(PAGES):
        mapping[page * mmap.PAGESIZE]
    return mapping


def test_pages_mapped_by_this_process_alone_are_given_back(tmp_path):
    alone = tmp_path / "alone"
    mapping = mapped_and_touched(alone)
    assert resident_kb(alone) >= PAGES * mmap.PAGESIZE // 1024
    assert page_out_alone() > 0
    assert resident_kb(alone) == 0
    assert mapping[:16] == alone.read_bytes()[:16]  # still readable: faulted in again
    mapping.close()


def test_pages_another_process_maps_stay(tmp_path):
    shared = tmp_path / "shared"
    mapping = mapped_and_touched(shared)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import mmap, sys\n"
         "f = open(sys.argv[1], 'rb')\n"
         "m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)\n"
         "for i in range(0, len(m), mmap.PAGESIZE): m[i]\n"
         "print('mapped', flush=True)\n"
         "sys.stdin.read()\n", str(shared)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        before = resident_kb(shared)
        page_out_alone()
        assert resident_kb(shared) == before >= PAGES * mmap.PAGESIZE // 1024
    finally:
        holder.communicate("")
        mapping.close()
