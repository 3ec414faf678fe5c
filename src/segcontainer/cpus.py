"""The cores this process may run on.

``os.cpu_count()`` is the host's count; a container started with ``--cpuset-cpus`` (or a
process under ``taskset``) may run on fewer, and sizing threads and workers by the host's
count then oversubscribes the cores it has. Python 3.13's ``os.process_cpu_count`` says the
same; this is it for 3.11.
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The number of cores in this process's affinity mask (the host's count where the
    platform has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
