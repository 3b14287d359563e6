"""retain_freed_memory: freed blocks are reused instead of faulted in again (in a fresh process: it is process-wide)."""

import platform
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent('''
    import resource, sys
    import torch
    from extracter.utils.malloc import retain_freed_memory
    if sys.argv[1] == 'retain':
        assert retain_freed_memory()
    def faults(mb):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = torch.ones(mb * 2 ** 18)  # written
        del t
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    faults(256)  # a large activation, freed
    print(faults(64) + faults(128))  # later ones of other sizes (as the main network's layers make)
''')


@pytest.mark.skipif(platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc', reason='glibc only')
def test_retained_memory_is_reused_without_page_faults():
    def second_allocation_faults(mode: str) -> int:  # of the later allocations
        out = subprocess.run([sys.executable, '-c', CHECK, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    pages = 192 * 2 ** 20 // 4096
    assert second_allocation_faults('default') > pages // 2  # glibc maps them afresh: every page faults
    assert second_allocation_faults('retain') < pages // 20  # the freed block is reused
