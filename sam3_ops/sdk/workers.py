"""One machine, several GPUs: starts one ``fiftyone delegated launch`` worker per visible GPU.

Usage::

    python -m sam3_ops.sdk.workers                       # one worker per visible GPU (or: sam3-ops-workers)
    python -m sam3_ops.sdk.workers --gpus 0,1,2,3        # these GPUs
    python -m sam3_ops.sdk.workers --cpu 2 --threads 1   # CPU workers (a machine without a GPU, tests)
    python -m sam3_ops.sdk.workers --dry-run             # print the commands, start nothing

Worker ``k`` is FiftyOne's own ``fiftyone delegated launch`` with ``CUDA_VISIBLE_DEVICES=k``: it
claims queued delegated operations from the database one at a time (atomically, so any number of
workers on any number of machines share one queue) and runs them on the only GPU it sees. By
default workers are monitored (``-m``): each operation runs in a child process whose parent pings
the operation, so a crashed operation leaves the worker alive; ``--no-monitor`` runs operations in
the worker itself (weights loaded once per worker, not once per shard).

This is a launcher, not a scheduler: it starts the workers, passes Ctrl+C / SIGTERM on to them and
waits. A worker that exits is reported, not restarted (give that job to systemd, a container
restart policy or Slurm); the shard it was running is queued again by
:func:`~sam3_ops.sdk.shards.reconcile` (which ``ShardedRun.wait`` and the *Sharded run status*
operator call). It imports neither fiftyone nor torch.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

#: set in each worker's environment: its number (0, 1, ...)
WORKER_ENV = "SAM3_OPS_WORKER"


def visible_gpus(environ=None) -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set (``""`` or ``-1``: none),
    else the GPUs ``nvidia-smi -L`` lists (none without ``nvidia-smi``)."""
    environ = os.environ if environ is None else environ
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        devices = [part.strip() for part in value.split(",") if part.strip()]
        # CUDA stops at the first invalid entry; -1 is the usual way of saying "no GPU"
        return [] if not devices or devices[0] == "-1" else devices
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listing.splitlines() if line.startswith("GPU "))]


def fiftyone_command() -> list[str]:
    """The ``fiftyone`` command of this Python environment."""
    script = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    if os.path.isfile(script):
        return [script]
    return [sys.executable, "-c", "import sys; from fiftyone.core.cli import main; sys.exit(main())"]


@dataclass
class Worker:
    """One worker to start: its number, device and command."""

    index: int
    device: str | None  # a CUDA device index, or None for a CPU worker
    argv: list
    env: dict = field(default_factory=dict)  # set on top of this process's environment

    def describe(self) -> str:
        settings = " ".join(f"{key}={shlex.quote(value)}" for key, value in self.env.items())
        return f"{settings} {shlex.join(self.argv)}"


def plan(
    gpus: list[str] | None = None,
    cpu: int = 0,
    threads: int | None = None,
    monitor: bool = True,
    monitor_interval: int | None = None,
) -> list[Worker]:
    """The workers to start: one per GPU of ``gpus`` (default: every visible GPU), or ``cpu`` CPU workers.

    Raises:
        ValueError: no GPU visible and no ``cpu`` workers asked for, or a bad count
    """
    if cpu < 0 or (threads is not None and threads < 1):
        raise ValueError("--cpu must be 0 or more and --threads 1 or more")
    if cpu:
        devices: list[str | None] = [None] * cpu
    else:
        devices = list(gpus) if gpus is not None else visible_gpus()
        if not devices:
            raise ValueError(
                "no GPU visible (CUDA_VISIBLE_DEVICES / nvidia-smi): name them with --gpus 0,1 or start CPU "
                "workers with --cpu N"
            )
    argv = [*fiftyone_command(), "delegated", "launch"]
    if monitor:
        argv.append("-m")
        if monitor_interval is not None:
            argv += ["--monitor-interval", str(int(monitor_interval))]
    workers = []
    for index, device in enumerate(devices):
        # a CPU worker sees no GPU at all, so device="cuda" settings fail loudly rather than share one
        env = {"CUDA_VISIBLE_DEVICES": device if device is not None else "", WORKER_ENV: str(index)}
        if threads is not None:
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        workers.append(Worker(index, device, list(argv), env))
    return workers


def start(workers: list[Worker], log_dir: str | None = None) -> list[subprocess.Popen]:
    """Starts ``workers``; each logs to ``<log_dir>/worker-<k>.log``, or to this process's output."""
    processes = []
    for worker in workers:
        output = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            output = open(os.path.join(log_dir, f"worker-{worker.index}.log"), "ab")
        process = subprocess.Popen(
            worker.argv, env={**os.environ, **worker.env}, stdout=output, stderr=subprocess.STDOUT if output else None
        )
        if output is not None:
            output.close()  # the child holds its own descriptor
        where = f"GPU {worker.device}" if worker.device is not None else "CPU"
        print(f"sam3_ops workers: worker {worker.index} on {where}: pid {process.pid}", flush=True)
        processes.append(process)
    return processes


def supervise(processes: list[subprocess.Popen], grace: float = 30.0) -> int:
    """Waits for ``processes``; SIGTERM / SIGINT (Ctrl+C) to this process are passed on to them
    (then, after ``grace`` seconds, SIGKILL). A worker that exits is reported, not restarted.
    Returns 0 if every worker ended cleanly or was stopped, else the first other exit status."""
    stopping: list[int] = []

    def stop(signum, frame):
        stopping.append(signum)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    status, reported, deadline = 0, set(), None
    try:
        while len(reported) < len(processes):
            if stopping and deadline is None:
                deadline = time.monotonic() + grace
            if deadline is not None and time.monotonic() > deadline:
                for process in processes:
                    if process.poll() is None:
                        process.kill()
            for index, process in enumerate(processes):
                code = process.poll()
                if code is not None and index not in reported:
                    reported.add(index)
                    print(f"sam3_ops workers: worker {index} (pid {process.pid}) exited with {code}", flush=True)
                    if code != 0 and not stopping and status == 0:
                        status = code if code > 0 else 128 - code
            time.sleep(0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def program_name(module: str, argv0: str | None = None) -> str:
    """The name ``--help`` shows: the console script's (``sam3-ops-workers``) when started through
    it, else ``python -m <module>`` (``sys.argv[0]`` is then the module's file path)."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    name = os.path.basename(argv0 or "")
    if not name or name in ("-c", "-m") or name.endswith(".py"):
        return f"python -m {module}"
    return name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog=program_name("sam3_ops.sdk.workers"),
        description="Start one `fiftyone delegated launch` worker per visible GPU (CUDA_VISIBLE_DEVICES=k each).",
    )
    parser.add_argument("--gpus", help="comma-separated GPU indices (default: every visible GPU)")
    parser.add_argument("--cpu", type=int, default=0, help="start this many CPU workers instead (no GPU)")
    parser.add_argument("--threads", type=int, help="torch/OpenMP threads per worker (OMP_NUM_THREADS)")
    parser.add_argument(
        "--no-monitor",
        dest="monitor",
        action="store_false",
        help="run operations in the worker process (weights loaded once per worker; a crash ends the worker)",
    )
    parser.add_argument(
        "--monitor-interval", type=int, help="seconds between a monitored worker's pings (FiftyOne: 60)"
    )
    parser.add_argument("--log-dir", help="write worker k's output to <dir>/worker-<k>.log")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; start nothing")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gpus = [part.strip() for part in args.gpus.split(",") if part.strip()] if args.gpus else None
    try:
        workers = plan(gpus, args.cpu, args.threads, args.monitor, args.monitor_interval)
    except ValueError as error:
        print(f"sam3_ops workers: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        for worker in workers:
            print(worker.describe())
        return 0
    return supervise(start(workers, args.log_dir))


if __name__ == "__main__":
    sys.exit(main())
