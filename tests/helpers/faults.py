"""Faults injected into real runs: an actor's process SIGKILLed once a file appears (a Ray Train worker
once its group has checkpointed, a rollout worker once a rollout is on disk)."""

import os
import signal
import threading
import time
from pathlib import Path


class WorkerKiller:
    """On a thread of its own: once a file matching `checkpoints` (a glob under `root`) exists, SIGKILL
    one alive actor whose class name holds `kind` on the cluster at `address`; `killed` holds its pid."""

    def __init__(self, root: Path, checkpoints: str, address: str | None = None, timeout_s: float = 300, kind: str = "RayTrainWorker"):
        self.root, self.checkpoints, self.address, self.timeout_s, self.kind = root, checkpoints, address, timeout_s, kind
        self.killed: list[int] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        from ray.util.state import list_actors

        deadline = time.time() + self.timeout_s
        while time.time() < deadline and not self.killed:
            if list(self.root.glob(self.checkpoints)):
                alive = list_actors(address=self.address, filters=[("state", "=", "ALIVE")])
                workers = [a for a in alive if self.kind in a.class_name and a.pid]
                if workers:
                    os.kill(workers[-1].pid, signal.SIGKILL)
                    self.killed.append(workers[-1].pid)
            time.sleep(0.05)

    def __enter__(self) -> "WorkerKiller":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join()
