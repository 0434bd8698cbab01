"""Run pretrain.py, pausing inside a checkpoint save (for the SIGKILL test).

    python tests/pause_in_save.py SECONDS STEP pretrain-args...

When the save of step STEP is about to commit -- every file of it written, only the
rename of its temporary folder to step_XXXXXXXX left -- this prints
"DEBUG: inside checkpoint save of step STEP" and sleeps SECONDS: the worst moment for
the process to die. The hook patches os.rename / os.replace in this process only; it
is test code, not part of pretrain.py."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pretrain  # noqa: E402


def main():
    seconds, step, argv = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    target = f"step_{step:08d}"

    def pausing(fn):
        def wrapper(src, dst, *a, **k):
            if os.path.basename(os.fspath(dst)) == target and ".tmp-" in os.fspath(src):
                print(f"DEBUG: inside checkpoint save of step {step}, pausing {seconds}s before commit", flush=True)
                time.sleep(seconds)
            return fn(src, dst, *a, **k)
        return wrapper

    os.rename, os.replace = pausing(os.rename), pausing(os.replace)
    sys.exit(pretrain.main(argv))


if __name__ == "__main__":
    main()
