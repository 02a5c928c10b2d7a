"""The command line with one fault injected (tests/test_faults.py): the process SIGKILLs
itself in the middle of writing checkpoint ``$BIDM_JAX_KILL_IN_SAVE`` (its arrays written,
the checkpoint not yet complete), the state a power cut or an OOM kill leaves.

    BIDM_JAX_KILL_IN_SAVE=4 python tests/fault_worker.py --config ... --workdir ...
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    from orbax.checkpoint._src.path import async_path

    partial = f"{os.environ['BIDM_JAX_KILL_IN_SAVE']}.orbax-checkpoint-tmp"
    rename = async_path.rename

    async def dying_rename(src, dst):
        # orbax finishes a checkpoint by renaming its temporary directories: die instead.
        if partial in str(src):
            os.kill(os.getpid(), signal.SIGKILL)
        return await rename(src, dst)

    async_path.rename = dying_rename
    from bidm_jax.main import entry

    entry()


if __name__ == "__main__":
    main()
