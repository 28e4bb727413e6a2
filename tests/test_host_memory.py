"""jaxgpt.train.host_memory: after retain_freed_memory(), a large block freed and allocated again is
served from memory the process already holds, instead of a fresh mmap that page-faults again.

Runs in a subprocess: the allocator setting is process-wide and this test must see the default
first (the baseline), then the setting."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import ctypes, ctypes.util, resource

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    SIZE = 64 << 20

    def touch_and_free():  # plain malloc (numpy would madvise huge pages itself)
        p = libc.malloc(SIZE)
        ctypes.memset(p, 1, SIZE)
        libc.free(p)

    def faults_of_reallocating():
        touch_and_free()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        touch_and_free()  # the same size again, every page touched
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    from jaxgpt.train.host_memory import retain_freed_memory
    default = faults_of_reallocating()
    applied = retain_freed_memory()
    retained = faults_of_reallocating()
    print(applied, default, retained)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_freed_large_block_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True).stdout.split()
    applied, default, retained = out[0] == "True", int(out[1]), int(out[2])
    assert applied
    pages = (64 << 20) // 4096  # 16,384 pages of 4 KiB
    # Default glibc: a 64 MiB block is a fresh mmap every time, so touching it faults (almost) every page.
    assert default > pages // 2, default
    # Retained: the block comes back from the heap already mapped.
    assert retained < pages // 20, retained


def test_the_setting_is_idempotent():
    from jaxgpt.train.host_memory import retain_freed_memory

    first = retain_freed_memory()
    assert retain_freed_memory() == first
