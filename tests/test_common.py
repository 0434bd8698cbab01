"""common.py: the thread count's view of how busy the machine is."""
import builtins
import os
import subprocess
import sys
import time

import common


def test_busy_cores_sees_another_process_spinning():
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 5: pass"])
    try:
        time.sleep(0.5)                      # let it start spinning
        busy = common.busy_cores(1.0)
    finally:
        spin.kill()
        spin.wait()
    # one process at 100% of one core, whatever else the machine does
    assert 0.7 <= busy <= os.cpu_count() + 0.01


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    real_open = builtins.open

    def no_proc(path, *a, **k):
        if path == "/proc/stat":
            raise FileNotFoundError(path)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", no_proc)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.25, 0.0, 0.0))
    assert common.busy_cores(0.01) == 3.25


def test_cpu_threads_rules(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert common.cpu_threads(3) == 3                                   # asked for: given
    monkeypatch.setattr(common, "busy_cores", lambda seconds=0.2: 0.2)
    assert common.cpu_threads() == 4                                    # idle: every core
    monkeypatch.setattr(common, "busy_cores", lambda seconds=0.2: 3.6)
    assert common.cpu_threads() == 1                                    # others hold the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(common, "busy_cores", lambda seconds=0.2: 0.0)
    assert common.cpu_threads() == 2                                    # cores shared by the ranks
