"""neuroflow: neuroimaging AI in the clinical workflow."""

import os
import sys

__version__ = "0.1.0"

# numpy asks the kernel for transparent huge pages (MADV_HUGEPAGE) on every array of 4 MiB or more, and a huge page
# can cost far more to fault in than the small pages it replaces: in a virtual machine that hands its free memory back
# to the host (virtio free page reporting, as on this project's development machine) each one is faulted in again on
# the host; on a host with fragmented memory and the kernel's default defrag setting ("madvise") the fault waits for
# compaction (numpy/numpy#31590). Measured here: a whole glioma run took 1.5 times as long with numpy's default, about
# 2,600 huge pages faulted in per run and no compaction (BENCHMARKS.md, "Transparent huge pages"); where huge pages
# come cheap, the default saves about 0.1 s per 600 MB. So off, unless the operator set NUMPY_MADVISE_HUGEPAGE. numpy
# reads the variable when it is first imported, hence here, before any of our modules imports it; the processes we
# start inherit it. Where numpy came first (a host application, a test runner), its run-time switch does the same.
HUGEPAGE_SETTING = "NUMPY_MADVISE_HUGEPAGE"
if HUGEPAGE_SETTING not in os.environ:
    os.environ[HUGEPAGE_SETTING] = "0"
    if "numpy" in sys.modules:
        _multiarray = getattr(getattr(sys.modules["numpy"], "_core", None), "multiarray", None)
        _switch = getattr(_multiarray, "_set_madvise_hugepage", None)  # private in numpy 2; absent: left as it is
        if callable(_switch):
            _switch(False)
